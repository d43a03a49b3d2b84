"""Hybrid mode with two data planes behind one control plane (shared certificate).

Run it: ``python examples/two_data_planes.py``. Both data planes connect, report the
control plane's config hash in ``GET /clustering/data-planes``, serve a route created on the
control plane, and drop it when it is deleted.
"""

from __future__ import annotations

import trio
from shared_mode import main

if __name__ == "__main__":
    trio.run(main, 2)
