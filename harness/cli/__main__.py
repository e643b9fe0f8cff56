"""`python -m harness.cli` is `rad`."""

import sys

from harness.cli import main

sys.exit(main())
