"""``python -m imgrag.app.cli`` runs the command line (as the ``imgrag`` script does)."""

import sys

from imgrag.app.cli import main

sys.exit(main())
