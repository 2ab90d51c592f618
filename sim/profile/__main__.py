"""``python -m sim.profile``: the ``simlb profile`` command line without the simlb entry point.

For GPU machines that have PyTorch but neither pydantic nor SimPy; bad input prints one line
and exits with code 2.
"""

from __future__ import annotations

import sys

from sim.errors import InputError
from sim.profile.cli import main

try:
    main()
except InputError as exc:  # the commands print their own; this catches anything before them
    print(f"simlb: error: {exc}", file=sys.stderr)  # noqa: T201
    sys.exit(2)
