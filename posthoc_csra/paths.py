"""Where the toolkit finds things that live outside the package (one setting each)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

SHARED_ENV = "POSTHOC_CSRA_SHARED"
CACHE_ENV = "POSTHOC_CSRA_CACHE"


def shared_dir() -> Optional[Path]:
    """The folder of real assets (``weights/``, ``data/``), or None when there is none.

    ``$POSTHOC_CSRA_SHARED`` when set; otherwise ``../shared`` beside the current
    directory or beside the project checkout this package was installed from.
    """
    env = os.environ.get(SHARED_ENV)
    if env:
        path = Path(env).expanduser()
        return path if path.is_dir() else None
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        path = (base / ".." / "shared").resolve()
        if path.is_dir():
            return path
    return None


def default_cache_dir() -> Path:
    """Per-user cache folder for per-location statistics (``$POSTHOC_CSRA_CACHE`` overrides)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "posthoc-csra"
