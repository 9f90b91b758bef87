"""Where transplant keeps what it computes once: converted models, downloads, vectors."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of everything transplant caches (``$TRANSPLANT_CACHE`` or ~/.cache/transplant)."""
    return Path(os.environ.get("TRANSPLANT_CACHE", Path.home() / ".cache" / "transplant"))
