"""``python -m advrank`` works like the ``advrank`` command (and under ``torchrun``)."""

import sys

from advrank.cli import main

sys.exit(main())
