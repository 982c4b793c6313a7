"""Where the shared reference data (official TRM/HRM checkpoints with the official code's outputs, full-size
configs) lies: ``$EDGEKIT_SHARED_FIXTURES``, else ``../shared/fixtures`` beside this repository, else
``/work/shared/fixtures`` (this workplace's place for it, so a clean clone anywhere on the machine finds it).  Tests
that need it skip when none exists."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_fixtures() -> Path:
    candidates = [os.environ.get("EDGEKIT_SHARED_FIXTURES"), REPO.parent / "shared" / "fixtures", "/work/shared/fixtures"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return REPO.parent / "shared" / "fixtures"


SHARED = shared_fixtures()
