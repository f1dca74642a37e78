"""`python -m training.jobrunner`: the fixed entry point of every job the jobs API submits
(clusters and images call it by this name). The runner lives in `training.running.jobrunner`."""

import sys

from training.running.jobrunner import main

if __name__ == "__main__":
    sys.exit(main())
