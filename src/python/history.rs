//! `usagewarden.UsageHistory`.

use super::args;
use super::clock::ClockArg;
use super::errors::IntoPyResult;
use super::usage::PyUsage;
use crate::clock::ns_to_seconds;
use crate::history::UsageHistory;
use crate::usage::Usage;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// A lock-safe sliding window of usage with running sums. Safe to share
/// between threads; `copy.deepcopy` and `pickle` give independent copies.
#[pyclass(frozen, name = "UsageHistory", module = "usagewarden")]
pub struct PyUsageHistory {
    inner: UsageHistory,
    clock: ClockArg,
}

#[pymethods]
impl PyUsageHistory {
    #[new]
    #[pyo3(signature = (window_seconds=None, clock=None), text_signature = "(window_seconds=60.0, clock=None)")]
    fn new(
        py: Python<'_>,
        window_seconds: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let window = args::optional_seconds(window_seconds, "window_seconds", true)?
            .unwrap_or(60_000_000_000);
        let clock = ClockArg::extract(clock)?;
        let inner = UsageHistory::new(window, clock.clock.clone()).py_err(py)?;
        Ok(PyUsageHistory { inner, clock })
    }

    /// The `ManualClock` it runs on, or `None` for the system clock.
    #[getter]
    fn clock(&self, py: Python<'_>) -> Py<PyAny> {
        self.clock.to_object(py)
    }

    #[getter]
    fn window_seconds(&self) -> f64 {
        ns_to_seconds(self.inner.window_ns())
    }

    /// Records `usage` at `at` (seconds on the history's clock; default now).
    #[pyo3(signature = (usage, at=None))]
    fn add(
        &self,
        py: Python<'_>,
        usage: &Bound<'_, PyAny>,
        at: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let usage = usage
            .cast::<PyUsage>()
            .map_err(|_| PyTypeError::new_err("usage must be a usagewarden.Usage"))?;
        let at = args::optional_seconds(at, "at", false)?;
        self.inner.add(usage.get().inner, at).py_err(py)
    }

    /// Usage within the last `window_seconds` (default: the whole window).
    #[pyo3(signature = (window_seconds=None))]
    fn usage_in_window(
        &self,
        py: Python<'_>,
        window_seconds: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyUsage> {
        let span = args::optional_seconds(window_seconds, "window_seconds", true)?;
        self.inner
            .usage_in_window(span)
            .py_err(py)
            .map(PyUsage::from)
    }

    /// Drops entries that have left the window; returns how many.
    fn cleanup(&self) -> usize {
        self.inner.cleanup()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "UsageHistory(window_seconds={}, entries={})",
            self.window_seconds(),
            self.inner.len()
        )
    }

    #[staticmethod]
    fn _restore(
        py: Python<'_>,
        window_seconds: &Bound<'_, PyAny>,
        clock: &Bound<'_, PyAny>,
        state: &str,
    ) -> PyResult<Self> {
        let history = PyUsageHistory::new(py, Some(window_seconds), Some(clock))?;
        let entries: Vec<(u64, u64, Usage)> = serde_json::from_str(state)
            .map_err(|e| PyValueError::new_err(format!("state: not a UsageHistory state ({e})")))?;
        history.inner.restore(&entries);
        Ok(history)
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let this = slf.get();
        let state = serde_json::to_string(&this.inner.snapshot()).expect("usage serialises");
        let args = (this.window_seconds(), this.clock.to_object(py), state).into_pyobject(py)?;
        Ok((slf.get_type().getattr("_restore")?, args))
    }
}
