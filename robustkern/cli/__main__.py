"""``python -m robustkern.cli``: the command line (what torchrun runs)."""

import sys

from robustkern.cli import main

sys.exit(main())
