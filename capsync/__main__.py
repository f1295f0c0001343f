"""``python -m capsync`` is the ``capsync`` command."""

import sys

from capsync.actors.cli import main

sys.exit(main())
