"""`python -m flashhead_core` is the `flashhead` command."""

import sys

from .tools.cli import main

sys.exit(main())
