"""``python -m steplog.cli``, as ``python -m steplog``."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
