"""``python -m spgpt_core.cli`` (what ``torchrun`` runs for distributed pretraining)."""

import sys

from . import main

sys.exit(main())
