"""``python -m advrobust`` runs the command-line tool."""

import sys

from advrobust.cli import main

sys.exit(main())
