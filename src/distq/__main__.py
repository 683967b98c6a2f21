"""``python -m distq``: the same as the ``distq`` command."""

import sys

from distq.cli import main

sys.exit(main())
