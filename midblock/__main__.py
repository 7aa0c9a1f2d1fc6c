"""``python -m midblock``."""

import sys

from midblock.cli import main

sys.exit(main())
