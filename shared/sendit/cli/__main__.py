"""``python -m sendit.cli``: the same as the `sendit` console script."""

import sys

from sendit.cli.main import main

sys.exit(main())
