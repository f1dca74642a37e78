import sys

from waldo.cli import main

sys.exit(main())
