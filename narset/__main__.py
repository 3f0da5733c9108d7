"""`python -m narset` is the `narset` command."""

import sys

from narset.cli import main

sys.exit(main())
