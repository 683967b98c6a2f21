"""Makes ``bench/`` importable for ``pytest bench/tests`` (the harness is not a package)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
