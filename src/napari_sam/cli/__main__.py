"""``python -m napari_sam.cli``: the command line."""

import sys

from . import main

sys.exit(main())
