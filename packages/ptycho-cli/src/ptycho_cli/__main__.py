"""``python -m ptycho_cli`` runs the ``ptycho`` command."""

import sys

from ptycho_cli.main import main

sys.exit(main())
