"""``python -m mevwatch``."""

import sys

from mevwatch.daemon.cli import main

sys.exit(main())
