//! Thin PyO3 bindings over the pure-Rust core: type conversion, error
//! mapping and the asyncio bridge. No limiting logic lives here.

mod args;
mod asyncio;
mod bridge;
mod budget;
mod clock;
mod errors;
mod history;
mod json_value;
mod lease;
mod ledger;
mod limiter;
mod limiter_methods;
mod limits;
mod pricing;
mod redis_limiter;
mod reservation;
mod usage;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEBUG_BUILD", cfg!(debug_assertions))?;
    // The longest identifier the ledger accepts, so adapters clip to the same rule.
    m.add("MAX_ID_CHARS", crate::ledger::event::MAX_ID_CHARS)?;
    m.add_class::<usage::PyUsage>()?;
    m.add_class::<clock::PyManualClock>()?;
    m.add_class::<limits::PyLimit>()?;
    m.add_class::<limits::PyRateLimits>()?;
    m.add_class::<history::PyUsageHistory>()?;
    m.add_class::<limiter::PyRateLimiter>()?;
    m.add_class::<limiter::PyDecision>()?;
    m.add_class::<reservation::PyReservation>()?;
    m.add_class::<asyncio::AcquireCoroutine>()?;
    m.add_class::<ledger::PyUsageEvent>()?;
    m.add_class::<ledger::PyAggregate>()?;
    m.add_class::<ledger::PyStoreStats>()?;
    m.add_class::<ledger::PySQLiteStore>()?;
    m.add_class::<ledger::PyAsyncSQLiteStore>()?;
    m.add_class::<ledger::PyPostgresStore>()?;
    m.add_class::<ledger::PyAsyncPostgresStore>()?;
    m.add_class::<ledger::PyCheckpoint>()?;
    m.add_class::<ledger::PyReceipt>()?;
    m.add_class::<ledger::PyVerifyReport>()?;
    m.add_class::<ledger::PyVerifyProblem>()?;
    m.add_class::<pricing::PyPricing>()?;
    m.add_class::<budget::PyBudget>()?;
    m.add_class::<budget::PyBudgetCore>()?;
    m.add_class::<ledger::PyBudgetRecord>()?;
    m.add_function(wrap_pyfunction!(ledger::_close_all_stores, m)?)?;
    m.add_function(wrap_pyfunction!(ledger::_events_from_json, m)?)?;
    m.add_function(wrap_pyfunction!(bridge::_quiesce, m)?)?;
    m.add_class::<lease::PyLease>()?;
    m.add_class::<redis_limiter::PyRedisRateLimiter>()?;
    m.add_function(wrap_pyfunction!(redis_limiter::_flush_redis_limiters, m)?)?;
    Ok(())
}
