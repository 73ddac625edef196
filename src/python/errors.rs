//! One place where core errors become Python exceptions. The exception
//! classes are defined in `usagewarden/errors.py` so they carry typed
//! attributes and pickle cleanly.

use super::limits::PyLimit;
use crate::clock::ns_to_seconds;
use crate::error::{CoreError, RateLimited};
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

fn error_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module =
        MODULE.get_or_try_init(py, || py.import("usagewarden.errors").map(Bound::unbind))?;
    module.bind(py).getattr(name)
}

pub(crate) fn rate_limited(py: Python<'_>, r: RateLimited) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("retry_after", r.retry_after_ns.map(ns_to_seconds))?;
        kwargs.set_item("limit", r.limit.map(PyLimit::from))?;
        kwargs.set_item("key", &r.key)?;
        let err = error_class(py, "RateLimitExceeded")?.call((&r.message,), Some(&kwargs))?;
        Ok(PyErr::from_value(err))
    };
    build().unwrap_or_else(|e| e)
}

fn store_error(py: Python<'_>, msg: String) -> PyErr {
    error_class(py, "StoreError")
        .and_then(|c| c.call1((msg,)))
        .map(PyErr::from_value)
        .unwrap_or_else(|e| e)
}

pub(crate) fn to_py(py: Python<'_>, err: CoreError) -> PyErr {
    match err {
        CoreError::InvalidArgument(arg, msg) => PyValueError::new_err(format!("{arg}: {msg}")),
        CoreError::AlreadySettled => PyValueError::new_err("reservation: already settled"),
        CoreError::RateLimited(r) => rate_limited(py, r),
        CoreError::Interrupted => PyKeyboardInterrupt::new_err("wait interrupted"),
        CoreError::Conflict(msg) => error_class(py, "ConflictError")
            .and_then(|c| c.call1((msg,)))
            .map(PyErr::from_value)
            .unwrap_or_else(|e| e),
        CoreError::Store(msg) | CoreError::Unavailable(msg) => store_error(py, msg),
        CoreError::Sqlite(e) => store_error(py, format!("SQLite: {e}")),
    }
}

/// `Result<T, CoreError>` to `PyResult<T>`.
pub(crate) trait IntoPyResult<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, CoreError> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

/// `__eq__`/`__ne__` for value types: `equal` is `None` when the other
/// operand is of another type (then Python tries the reflected operation).
pub(crate) fn compare_eq(
    py: Python<'_>,
    equal: Option<bool>,
    op: pyo3::basic::CompareOp,
) -> PyResult<Py<PyAny>> {
    use pyo3::basic::CompareOp;
    let result = match (equal, op) {
        (Some(equal), CompareOp::Eq) => equal,
        (Some(equal), CompareOp::Ne) => !equal,
        _ => return Ok(py.NotImplemented()),
    };
    Ok(pyo3::types::PyBool::new(py, result)
        .to_owned()
        .into_any()
        .unbind())
}
