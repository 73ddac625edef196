//! `usagewarden.Reservation`: admitted usage to settle or cancel.

use super::args;
use super::asyncio::completed;
use super::errors::IntoPyResult;
use super::usage::PyUsage;
use crate::clock::ns_to_seconds;
use crate::limiter::{Reservation, ReservationState};
use crate::usage::Usage;
use pyo3::prelude::*;

/// Usage admitted on an estimate. `settle` records the actual usage at the
/// original moment (refunding or charging the difference); `cancel` refunds
/// it all. As a context manager (sync or async) it cancels when the block
/// raises, unless it was settled.
#[pyclass(frozen, freelist = 64, name = "Reservation", module = "usagewarden")]
pub struct PyReservation {
    pub(crate) core: Reservation,
    pub(crate) key: Py<PyAny>,
}

impl PyReservation {
    fn exit(&self, py: Python<'_>, exc_type: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        if exc_type.is_some_and(|t| !t.is_none()) && self.core.state() == ReservationState::Open {
            self.core.cancel().py_err(py)?;
        }
        Ok(false)
    }
}

#[pymethods]
impl PyReservation {
    /// The key (or tuple of keys) it was admitted on.
    #[getter]
    fn key(&self, py: Python<'_>) -> Py<PyAny> {
        self.key.clone_ref(py)
    }

    /// What is counted for it now: the estimate, the settled usage, or nothing once cancelled.
    #[getter]
    fn usage(&self) -> PyUsage {
        self.core.usage().into()
    }

    #[getter]
    fn settled(&self) -> bool {
        self.core.state() == ReservationState::Settled
    }

    #[getter]
    fn cancelled(&self) -> bool {
        self.core.state() == ReservationState::Cancelled
    }

    /// When it was admitted, in seconds on the limiter's clock.
    #[getter]
    fn at(&self) -> f64 {
        ns_to_seconds(self.core.at())
    }

    /// Replaces the estimate with the actual usage; fields left `None` keep
    /// the estimate. Returns the usage now counted. Settling twice is a `ValueError`.
    #[pyo3(signature = (input_tokens=None, output_tokens=None, cache_read_tokens=None, cache_write_tokens=None, cost=None))]
    fn settle(
        &self,
        py: Python<'_>,
        input_tokens: Option<&Bound<'_, PyAny>>,
        output_tokens: Option<&Bound<'_, PyAny>>,
        cache_read_tokens: Option<&Bound<'_, PyAny>>,
        cache_write_tokens: Option<&Bound<'_, PyAny>>,
        cost: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyUsage> {
        let input = args::optional_count(input_tokens, "input_tokens")?;
        let output = args::optional_count(output_tokens, "output_tokens")?;
        let cache_read = args::optional_count(cache_read_tokens, "cache_read_tokens")?;
        let cache_write = args::optional_count(cache_write_tokens, "cache_write_tokens")?;
        let cost = args::optional_cost(cost, "cost")?;
        let estimate = self.core.usage();
        let actual = Usage {
            requests: estimate.requests,
            input_tokens: input.unwrap_or(estimate.input_tokens),
            output_tokens: output.unwrap_or(estimate.output_tokens),
            cache_read_tokens: cache_read.unwrap_or(estimate.cache_read_tokens),
            cache_write_tokens: cache_write.unwrap_or(estimate.cache_write_tokens),
            cost_nanos: cost.unwrap_or(estimate.cost_nanos),
        };
        self.core.settle(actual).py_err(py).map(PyUsage::from)
    }

    /// Refunds everything; returns `False` if it was already cancelled.
    /// Cancelling a settled reservation is a `ValueError`.
    fn cancel(&self, py: Python<'_>) -> PyResult<bool> {
        self.core.cancel().py_err(py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (exc_type=None, _exc=None, _tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.exit(py, exc_type)
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        completed(slf.py(), slf)
    }

    #[pyo3(signature = (exc_type=None, _exc=None, _tb=None))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        exc_type: Option<&Bound<'py, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let suppress = self.exit(py, exc_type)?;
        completed(py, suppress)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let state = match self.core.state() {
            ReservationState::Open => "open",
            ReservationState::Settled => "settled",
            ReservationState::Cancelled => "cancelled",
        };
        Ok(format!(
            "Reservation(key={}, state={state}, usage={})",
            self.key.bind(py).repr()?,
            self.core.usage()
        ))
    }
}
