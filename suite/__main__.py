"""``python -m suite``: the command line (``suite.cli``), which runs the subcommand named in ``suite._cli``."""
import sys

from suite.cli import main

sys.exit(main())
