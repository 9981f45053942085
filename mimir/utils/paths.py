"""Where mimir keeps its files: the module registry and the image cache.

Both default to the platform's user directories (platformdirs) and can be
moved with environment variables, read at call time so tests and notebooks
can change them:

- ``MIMIR_HOME``: installed inference modules (default: user data dir).
- ``MIMIR_CACHE``: preprocessed 2-D images (default: user cache dir).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "mimir"


def home_dir() -> Path:
    """Root of the module registry (``$MIMIR_HOME`` or the user data dir)."""
    env = os.environ.get("MIMIR_HOME")
    return Path(env).expanduser() if env else Path(platformdirs.user_data_dir(APP_NAME))


def modules_dir() -> Path:
    """Folder holding one sub-folder per installed module."""
    return home_dir() / "modules"


def cache_dir() -> Path:
    """Root of the preprocessing cache (``$MIMIR_CACHE`` or the user cache dir)."""
    env = os.environ.get("MIMIR_CACHE")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir(APP_NAME))
