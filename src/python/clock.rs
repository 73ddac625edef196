//! `usagewarden.ManualClock` and the `clock=` argument.

use super::args;
use crate::clock::{ns_to_seconds, Clock, ManualClock, SystemClock};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::sync::Arc;

/// A clock for tests: it moves only when told to, and waking anything
/// waiting on it needs no real sleep.
#[pyclass(frozen, name = "ManualClock", module = "usagewarden")]
pub struct PyManualClock {
    pub(crate) inner: Arc<ManualClock>,
}

#[pymethods]
impl PyManualClock {
    #[new]
    #[pyo3(signature = (start=None), text_signature = "(start=0.0)")]
    fn new(start: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let start = args::optional_seconds(start, "start", false)?.unwrap_or(0);
        Ok(PyManualClock {
            inner: ManualClock::new(start),
        })
    }

    /// Current time in seconds.
    fn now(&self) -> f64 {
        ns_to_seconds(self.inner.now())
    }

    /// Moves the clock forward and wakes whatever waits on it.
    fn advance(&self, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
        self.inner
            .advance(args::seconds(seconds, "seconds", false)?);
        Ok(())
    }

    /// Sets the time; it cannot go backwards.
    fn set(&self, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
        let ns = args::seconds(seconds, "seconds", false)?;
        if !self.inner.set(ns) {
            return Err(PyValueError::new_err(format!(
                "seconds: a ManualClock cannot go backwards (now {}, asked {})",
                self.now(),
                ns_to_seconds(ns)
            )));
        }
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!("ManualClock(now={})", self.now())
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let args = (slf.get().now(),).into_pyobject(slf.py())?;
        Ok((slf.get_type().into_any(), args))
    }
}

/// The clock given as `clock=`: a `ManualClock`, or `None` for the system clock.
pub(crate) struct ClockArg {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) manual: Option<Py<PyManualClock>>,
}

impl ClockArg {
    pub(crate) fn clone_ref(&self, py: Python<'_>) -> ClockArg {
        ClockArg {
            clock: self.clock.clone(),
            manual: self.manual.as_ref().map(|m| m.clone_ref(py)),
        }
    }

    pub(crate) fn extract(obj: Option<&Bound<'_, PyAny>>) -> PyResult<ClockArg> {
        match obj {
            Some(o) if !o.is_none() => {
                let manual = o.cast::<PyManualClock>().map_err(|_| {
                    PyTypeError::new_err("clock must be a usagewarden.ManualClock or None")
                })?;
                Ok(ClockArg {
                    clock: manual.get().inner.clone(),
                    manual: Some(manual.clone().unbind()),
                })
            }
            _ => Ok(ClockArg {
                clock: Arc::new(SystemClock),
                manual: None,
            }),
        }
    }

    pub(crate) fn to_object(&self, py: Python<'_>) -> Py<PyAny> {
        match &self.manual {
            Some(m) => m.clone_ref(py).into_any(),
            None => py.None(),
        }
    }
}
