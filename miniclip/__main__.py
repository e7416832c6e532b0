"""`python -m miniclip ...`: the same as the `miniclip` command."""

import sys

from .cli import main

sys.exit(main())
