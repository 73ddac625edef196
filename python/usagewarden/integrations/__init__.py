"""Adapters for agent frameworks. Each module imports its framework when it
is imported, never before; ``import usagewarden`` imports none of them."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


def require(module: str, extra: str) -> ModuleType:
    """Imports ``module`` or raises an ``ImportError`` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this usagewarden integration needs {module.split('.')[0]}; "
            f"install it with: pip install 'usagewarden[{extra}]'"
        ) from exc


def checked_adapter_args(
    warden: Any, *, max_output_tokens: Any, agent_id: str | None, consumer_id: str | None
) -> int:
    """Checks an adapter's arguments with the ledger's own rules, when the
    adapter is made rather than after its first call (whose event would be
    lost); returns ``max_output_tokens``."""
    from .._core import UsageEvent
    from ..warden import Warden, _count

    if not isinstance(warden, Warden):
        raise TypeError("warden: must be a usagewarden.Warden")
    UsageEvent(agent_id or warden.agent_id, consumer_id or "default")  # names a bad id
    return _count(max_output_tokens, "max_output_tokens")
