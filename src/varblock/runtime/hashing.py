"""Source hashes that stamp built cubins (shared by build_kernels.py and the runtime's staleness check)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def files_hash(paths: Iterable[str | Path]) -> str:
    """sha256 over the named files' names and bytes, in order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode())
        h.update(b"\0")
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
