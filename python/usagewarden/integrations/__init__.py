"""Adapters for agent frameworks. Each module imports its framework when it
is imported, never before; ``import usagewarden`` imports none of them."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Imports ``module`` or raises an ``ImportError`` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this usagewarden integration needs {module.split('.')[0]}; "
            f"install it with: pip install 'usagewarden[{extra}]'"
        ) from exc
