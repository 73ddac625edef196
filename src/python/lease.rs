//! `usagewarden.Lease`: how much of each limit a leased `RedisRateLimiter`
//! takes from Redis at a time, and for how long.

use super::args;
use super::errors::IntoPyResult;
use crate::limiter::redis::lease::Lease;
use pyo3::prelude::*;

/// A slice of each limit taken from Redis in one round trip and admitted from
/// locally: `fraction` (0 < fraction <= 1) of each limit, for `seconds` (> 0).
/// Pass it as `RedisRateLimiter(..., lease=uw.Lease(fraction=0.1, seconds=1.0))`.
#[pyclass(frozen, name = "Lease", module = "usagewarden")]
pub struct PyLease {
    pub(crate) core: Lease,
}

#[pymethods]
impl PyLease {
    #[new]
    #[pyo3(signature = (*, fraction, seconds))]
    fn new(
        py: Python<'_>,
        fraction: &Bound<'_, PyAny>,
        seconds: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let fraction = args::number(fraction, "fraction")?;
        let duration = args::seconds(seconds, "seconds", true)?;
        Ok(PyLease {
            core: Lease::new(fraction, duration).py_err(py)?,
        })
    }

    /// The share of each limit a slice takes.
    #[getter]
    fn fraction(&self) -> f64 {
        self.core.fraction()
    }

    /// How long a slice lasts before what it did not use goes back.
    #[getter]
    fn seconds(&self) -> f64 {
        self.core.duration_ns() as f64 / 1e9
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyLease>()
            .is_ok_and(|o| o.get().core == self.core)
    }

    fn __hash__(&self) -> u64 {
        self.core.fraction().to_bits() ^ self.core.duration_ns().rotate_left(17)
    }

    fn __repr__(&self) -> String {
        format!(
            "Lease(fraction={:?}, seconds={:?})",
            self.core.fraction(),
            self.seconds()
        )
    }
}
