//! Store work prepared with the interpreter attached (argument checks,
//! conversions), then run without it: on this thread for the sync store,
//! on the tokio blocking pool for the async one.

use crate::error::CoreResult;
use crate::python::bridge::{self, Payload};
use crate::python::errors::{to_py, IntoPyResult};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

pub(crate) type Job<T> = Box<dyn FnOnce() -> CoreResult<T> + Send>;

pub(crate) fn job<T>(f: impl FnOnce() -> CoreResult<T> + Send + 'static) -> Job<T> {
    Box::new(f)
}

/// Runs `job` on this thread with the interpreter released.
pub(crate) fn run_sync<T: Send>(py: Python<'_>, job: Job<T>) -> PyResult<T> {
    py.detach(job).py_err(py)
}

/// Runs `job` on the blocking pool; returns an awaitable for the caller's loop.
pub(crate) fn run_async<T>(py: Python<'_>, job: Job<T>) -> PyResult<Bound<'_, PyAny>>
where
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    let work = async move {
        let outcome = tokio::task::spawn_blocking(job).await;
        Payload::Value(Box::new(move |py| match outcome {
            Ok(Ok(value)) => value.into_py_any(py),
            Ok(Err(e)) => Err(to_py(py, e)),
            Err(e) => Err(PyRuntimeError::new_err(format!("store task failed: {e}"))),
        }))
    };
    bridge::spawn(py, work, None)
}
