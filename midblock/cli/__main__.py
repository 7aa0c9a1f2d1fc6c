"""``python -m midblock.cli``."""

import sys

from midblock.cli import main

sys.exit(main())
