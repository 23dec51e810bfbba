"""``python -m emclass2d.jobtypes.ccpem``: print the pipeliner entry-point lines of every job type."""
import sys

from emclass2d.jobtypes.ccpem import main

sys.exit(main())
