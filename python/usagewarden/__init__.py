"""usagewarden: keep AI-agent code inside its rate limits and know what it spent.

The core is written in Rust; everything here is importable without any agent
framework installed.
"""

from __future__ import annotations

import logging
import warnings

from ._core import (
    DEBUG_BUILD,
    AcquireCoroutine,
    Decision,
    Limit,
    ManualClock,
    RateLimiter,
    RateLimits,
    Reservation,
    Usage,
    UsageHistory,
    __version__,
)
from .errors import (
    BudgetExceeded,
    ConflictError,
    RateLimitExceeded,
    StoreError,
    UsageWardenError,
)

__all__ = [
    "AcquireCoroutine",
    "BudgetExceeded",
    "ConflictError",
    "Decision",
    "Limit",
    "ManualClock",
    "RateLimitExceeded",
    "RateLimiter",
    "RateLimits",
    "Reservation",
    "StoreError",
    "Usage",
    "UsageHistory",
    "UsageWardenError",
    "__version__",
]

logging.getLogger("usagewarden").addHandler(logging.NullHandler())

if DEBUG_BUILD:
    warnings.warn(
        "usagewarden was built in debug mode and will be slow; "
        "install it with `pip install .` or `maturin develop --release`",
        RuntimeWarning,
        stacklevel=2,
    )
