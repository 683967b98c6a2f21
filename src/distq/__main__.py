"""``python -m distq``: the same as the ``distq`` command."""

import sys

from distq.startup import main

sys.exit(main())
