"""Content hashes: of a file (once per process for each path, size and mtime) and of a JSON-able object.

Cache keys (model weights, datasets) hash what files hold, never when they were written, so a copy of the same
files (a fresh clone, re-copied shared assets) finds the same cache entries. Imports only the standard library.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Tuple, Union

from .errors import MissingInputError

__all__ = ["file_sha256", "sha256_json"]

_HASHES: Dict[Tuple[str, int, int], str] = {}


def file_sha256(path: Union[str, Path]) -> str:
    """sha256 (hex) of a file's bytes; hashed once per process for each (path, size, mtime_ns)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise MissingInputError(f"file not found: {path}")
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = _hash_file(path)
    return _HASHES[key]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj) -> "hashlib._Hash":
    """A running sha256 started with ``obj`` as canonical JSON (sorted keys, ASCII)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=True).encode())
