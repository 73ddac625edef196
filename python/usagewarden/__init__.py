"""usagewarden: keep AI-agent code inside its rate limits and know what it spent.

The core is written in Rust; everything here is importable without any agent
framework installed.
"""

from __future__ import annotations

import atexit
import logging
import warnings

from ._core import (
    DEBUG_BUILD,
    AcquireCoroutine,
    Aggregate,
    AsyncPostgresStore,
    AsyncSQLiteStore,
    Budget,
    BudgetRecord,
    Checkpoint,
    Decision,
    Lease,
    Limit,
    ManualClock,
    PostgresStore,
    Pricing,
    RateLimiter,
    RateLimits,
    Receipt,
    RedisRateLimiter,
    Reservation,
    SQLiteStore,
    StoreStats,
    Usage,
    UsageEvent,
    UsageHistory,
    VerifyProblem,
    VerifyReport,
    __version__,
    _close_all_stores,
    _flush_redis_limiters,
    _quiesce,
)
from .alerts import DeliveryAttempt, WebhookAlerts
from .budgets import BudgetCheck, BudgetEngine
from .errors import (
    BudgetExceeded,
    ConflictError,
    RateLimitExceeded,
    StoreError,
    UsageWardenError,
)
from .limiter_protocol import Limiter
from .store_protocol import AsyncMeteringStore, MeteringStore, open_async_store, open_store
from .warden import Call, RunMeter, Warden

__all__ = [
    "AcquireCoroutine",
    "Aggregate",
    "AsyncMeteringStore",
    "AsyncPostgresStore",
    "AsyncSQLiteStore",
    "Budget",
    "BudgetCheck",
    "BudgetRecord",
    "BudgetEngine",
    "Call",
    "Checkpoint",
    "BudgetExceeded",
    "ConflictError",
    "Decision",
    "DeliveryAttempt",
    "Lease",
    "Limit",
    "Limiter",
    "ManualClock",
    "MeteringStore",
    "PostgresStore",
    "Pricing",
    "RateLimitExceeded",
    "RateLimiter",
    "RateLimits",
    "Receipt",
    "RedisRateLimiter",
    "Reservation",
    "RunMeter",
    "SQLiteStore",
    "StoreError",
    "StoreStats",
    "Usage",
    "UsageEvent",
    "UsageHistory",
    "UsageWardenError",
    "VerifyProblem",
    "VerifyReport",
    "Warden",
    "WebhookAlerts",
    "__version__",
    "open_async_store",
    "open_store",
]

logging.getLogger("usagewarden").addHandler(logging.NullHandler())

# At exit (last registered, first run): commit what open stores have queued,
# then let background threads finish their calls into Python.
atexit.register(_quiesce)
atexit.register(_close_all_stores)
# Settles and refunds not yet sent to Redis are sent before exit.
atexit.register(_flush_redis_limiters)

if DEBUG_BUILD:
    warnings.warn(
        "usagewarden was built in debug mode and will be slow; "
        "install it with `pip install .` or `maturin develop --release`",
        RuntimeWarning,
        stacklevel=2,
    )
