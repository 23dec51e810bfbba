"""``python -m emclass2d.jobtypes.cli``: the ``emclass2d`` command."""
import sys

from emclass2d.jobtypes.cli import main

sys.exit(main())
