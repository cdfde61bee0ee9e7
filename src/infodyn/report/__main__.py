"""`python -m infodyn.report` = `infodyn-report`."""

import sys

from infodyn.report.cli import main

sys.exit(main())
