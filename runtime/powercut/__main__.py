"""`python -m capsync.runtime.powercut`: the power-cut file system's process (see daemon.py)."""

import sys

from capsync.runtime.powercut.daemon import main

sys.exit(main())
