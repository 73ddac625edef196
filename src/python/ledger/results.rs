//! `usagewarden.Aggregate` and `usagewarden.StoreStats`.

use super::pytime;
use crate::ledger::sqlite::{Aggregate, StoreStats};
use crate::usage::nanos_to_usd;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Totals over a group of events (computed by SQLite, not in Python).
#[pyclass(frozen, name = "Aggregate", module = "usagewarden")]
pub struct PyAggregate {
    pub(crate) inner: Aggregate,
}

#[pymethods]
impl PyAggregate {
    /// The group's key: an agent, consumer, model, action or namespace, a
    /// time bucket (`2026-02-14`, `2026-W07`, `2026-02`, `2026-02-14T13:00+01:00`),
    /// or `"all"` for a summary. `None` for events without a value (no model).
    #[getter]
    fn group(&self) -> Option<&str> {
        self.inner.group.as_deref()
    }
    #[getter]
    fn events(&self) -> u64 {
        self.inner.events
    }
    #[getter]
    fn tokens_in(&self) -> u64 {
        self.inner.tokens_in
    }
    #[getter]
    fn tokens_out(&self) -> u64 {
        self.inner.tokens_out
    }
    #[getter]
    fn total_tokens(&self) -> u64 {
        self.inner.total_tokens()
    }
    #[getter]
    fn cache_read_tokens(&self) -> u64 {
        self.inner.cache_read_tokens
    }
    #[getter]
    fn cache_write_tokens(&self) -> u64 {
        self.inner.cache_write_tokens
    }
    #[getter]
    fn duration_ms(&self) -> u64 {
        self.inner.duration_ms
    }
    #[getter]
    fn api_calls(&self) -> u64 {
        self.inner.api_calls
    }
    #[getter]
    fn units(&self) -> u64 {
        self.inner.units
    }
    /// Sum of known costs in USD; `None` when no event in the group has a cost.
    #[getter]
    fn cost(&self) -> Option<f64> {
        self.inner.cost_nanos.map(nanos_to_usd)
    }
    /// Events whose cost is unknown (not counted in `cost`).
    #[getter]
    fn unpriced_events(&self) -> u64 {
        self.inner.unpriced_events
    }
    #[getter]
    fn unique_agents(&self) -> u64 {
        self.inner.unique_agents
    }
    #[getter]
    fn unique_consumers(&self) -> u64 {
        self.inner.unique_consumers
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("group", self.group())?;
        d.set_item("events", self.events())?;
        d.set_item("tokens_in", self.tokens_in())?;
        d.set_item("tokens_out", self.tokens_out())?;
        d.set_item("total_tokens", self.total_tokens())?;
        d.set_item("cache_read_tokens", self.cache_read_tokens())?;
        d.set_item("cache_write_tokens", self.cache_write_tokens())?;
        d.set_item("duration_ms", self.duration_ms())?;
        d.set_item("api_calls", self.api_calls())?;
        d.set_item("units", self.units())?;
        d.set_item("cost", self.cost())?;
        d.set_item("unpriced_events", self.unpriced_events())?;
        d.set_item("unique_agents", self.unique_agents())?;
        d.set_item("unique_consumers", self.unique_consumers())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Aggregate(group={}, events={}, total_tokens={}, cost={})",
            crate::python::ledger::opt_repr(self.inner.group.as_deref()),
            self.inner.events,
            self.inner.total_tokens(),
            self.cost().map_or("None".into(), |c| format!("{c:?}"))
        )
    }
}

/// The state of a store: what it holds and how its writer is doing.
#[pyclass(frozen, name = "StoreStats", module = "usagewarden")]
pub struct PyStoreStats {
    pub(crate) inner: StoreStats,
}

#[pymethods]
impl PyStoreStats {
    #[getter]
    fn events(&self) -> u64 {
        self.inner.events
    }
    #[getter]
    fn oldest<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner
            .oldest_us
            .map(|us| pytime::from_us(py, us))
            .transpose()
    }
    #[getter]
    fn newest<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner
            .newest_us
            .map(|us| pytime::from_us(py, us))
            .transpose()
    }
    /// Retention in seconds, or `None` to keep everything.
    #[getter]
    fn retention_seconds(&self) -> Option<f64> {
        self.inner.retention_us.map(|us| us as f64 / 1e6)
    }
    /// Events this process inserted since the store was opened.
    #[getter]
    fn inserted(&self) -> u64 {
        self.inner.inserted
    }
    /// Events ignored because the same event was already recorded.
    #[getter]
    fn duplicates(&self) -> u64 {
        self.inner.duplicates
    }
    /// Events refused because their request id was recorded with other content.
    #[getter]
    fn conflicts(&self) -> u64 {
        self.inner.conflicts
    }
    /// Events queued but not yet committed.
    #[getter]
    fn queued(&self) -> u64 {
        self.inner.queued
    }
    /// Failed write attempts (each is retried).
    #[getter]
    fn write_errors(&self) -> u64 {
        self.inner.write_errors
    }
    #[getter]
    fn last_error(&self) -> Option<&str> {
        self.inner.last_error.as_deref()
    }
    /// Database file plus write-ahead log, in bytes.
    #[getter]
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("events", self.events())?;
        d.set_item("oldest", self.oldest(py)?)?;
        d.set_item("newest", self.newest(py)?)?;
        d.set_item("retention_seconds", self.retention_seconds())?;
        d.set_item("inserted", self.inserted())?;
        d.set_item("duplicates", self.duplicates())?;
        d.set_item("conflicts", self.conflicts())?;
        d.set_item("queued", self.queued())?;
        d.set_item("write_errors", self.write_errors())?;
        d.set_item("last_error", self.last_error())?;
        d.set_item("size_bytes", self.size_bytes())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "StoreStats(events={}, queued={}, duplicates={}, conflicts={}, write_errors={}, size_bytes={})",
            self.inner.events,
            self.inner.queued,
            self.inner.duplicates,
            self.inner.conflicts,
            self.inner.write_errors,
            self.inner.size_bytes
        )
    }
}
