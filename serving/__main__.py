"""`python -m serving`: `waldo serve` in an install without torch (the serving image)."""

import sys

from serving.cli import main

sys.exit(main())
