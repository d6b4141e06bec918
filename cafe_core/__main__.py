"""``python -m cafe_core`` is the ``cafe`` command."""

import sys

from .cli import main

sys.exit(main())
