//! Argument checks at the Python edge. Every error names the argument, and
//! every check runs before anything is recorded.

use crate::clock::seconds_to_ns;
use crate::usage::{usd_to_nanos, Usage, MAX_COUNT};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString, PyTuple};
use smallvec::SmallVec;

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".into())
}

/// A `str` argument, copied out; anything else is a `TypeError` naming it.
pub(crate) fn text(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<String> {
    let s = obj.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!("{name} must be a str, not {}", type_name(obj)))
    })?;
    Ok(s.to_cow()?.into_owned())
}

/// A `str` argument that may be missing or `None`.
pub(crate) fn optional_text(
    obj: Option<&Bound<'_, PyAny>>,
    name: &str,
) -> PyResult<Option<String>> {
    match obj {
        Some(o) if !o.is_none() => text(o, name).map(Some),
        _ => Ok(None),
    }
}

/// A non-negative integer count up to 2**63 - 1.
pub(crate) fn count(obj: Option<&Bound<'_, PyAny>>, name: &str, default: u64) -> PyResult<u64> {
    let Some(obj) = obj else { return Ok(default) };
    if !obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, not {}",
            type_name(obj)
        )));
    }
    match obj.extract::<i64>() {
        Ok(v) if v >= 0 => Ok(v as u64),
        Ok(v) => Err(PyValueError::new_err(format!(
            "{name} must be >= 0, got {v}"
        ))),
        Err(_) => Err(PyValueError::new_err(format!(
            "{name} must be between 0 and 2**63 - 1 ({MAX_COUNT}), got {obj}"
        ))),
    }
}

/// A count that may be `None` (meaning "keep what was there").
pub(crate) fn optional_count(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<u64>> {
    match obj {
        Some(o) if !o.is_none() => count(Some(o), name, 0).map(Some),
        _ => Ok(None),
    }
}

pub(crate) fn number(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<f64> {
    if obj.is_instance_of::<PyBool>()
        || !(obj.is_instance_of::<PyFloat>() || obj.is_instance_of::<PyInt>())
    {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a number, not {}",
            type_name(obj)
        )));
    }
    obj.extract::<f64>()
        .map_err(|_| PyValueError::new_err(format!("{name} is too large")))
}

/// A cost in USD (float or int): finite, non-negative; returned in nano-USD.
pub(crate) fn cost(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<u64> {
    let Some(obj) = obj else { return Ok(0) };
    let usd = number(obj, name)?;
    usd_to_nanos(usd).ok_or_else(|| {
        PyValueError::new_err(format!(
            "{name} must be a finite, non-negative amount of USD below {:.0}, got {usd}",
            MAX_COUNT as f64 / 1e9
        ))
    })
}

pub(crate) fn optional_cost(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<u64>> {
    match obj {
        Some(o) if !o.is_none() => cost(Some(o), name).map(Some),
        _ => Ok(None),
    }
}

/// Seconds (float or int) as nanoseconds; `positive` refuses zero.
pub(crate) fn seconds(obj: &Bound<'_, PyAny>, name: &str, positive: bool) -> PyResult<u64> {
    let secs = number(obj, name)?;
    match seconds_to_ns(secs) {
        Some(ns) if ns > 0 || !positive => Ok(ns),
        _ => Err(PyValueError::new_err(format!(
            "{name} must be a finite number of seconds {}, got {secs}",
            if positive { "> 0" } else { ">= 0" }
        ))),
    }
}

pub(crate) fn optional_seconds(
    obj: Option<&Bound<'_, PyAny>>,
    name: &str,
    positive: bool,
) -> PyResult<Option<u64>> {
    match obj {
        Some(o) if !o.is_none() => seconds(o, name, positive).map(Some),
        _ => Ok(None),
    }
}

/// The keyword arguments that describe one request's usage.
pub(crate) struct UsageArgs<'a, 'py> {
    pub requests: Option<&'a Bound<'py, PyAny>>,
    pub input_tokens: Option<&'a Bound<'py, PyAny>>,
    pub output_tokens: Option<&'a Bound<'py, PyAny>>,
    pub cache_read_tokens: Option<&'a Bound<'py, PyAny>>,
    pub cache_write_tokens: Option<&'a Bound<'py, PyAny>>,
    pub cost: Option<&'a Bound<'py, PyAny>>,
}

impl UsageArgs<'_, '_> {
    pub(crate) fn to_usage(&self, default_requests: u64) -> PyResult<Usage> {
        Ok(Usage {
            requests: count(self.requests, "requests", default_requests)?,
            input_tokens: count(self.input_tokens, "input_tokens", 0)?,
            output_tokens: count(self.output_tokens, "output_tokens", 0)?,
            cache_read_tokens: count(self.cache_read_tokens, "cache_read_tokens", 0)?,
            cache_write_tokens: count(self.cache_write_tokens, "cache_write_tokens", 0)?,
            cost_nanos: cost(self.cost, "cost")?,
        })
    }
}

/// Keys borrowed from their Python strings (no copy on CPython >= 3.10).
pub(crate) type Keys = SmallVec<[PyBackedStr; 2]>;

/// A key is a str, or a tuple of str acquired together.
pub(crate) fn keys(py: Python<'_>, obj: Option<&Bound<'_, PyAny>>) -> PyResult<Keys> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        let default = intern!(py, "default");
        return Ok(smallvec::smallvec![default.clone().try_into()?]);
    };
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(smallvec::smallvec![s.clone().try_into()?]);
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        let mut out = SmallVec::with_capacity(tuple.len());
        for item in tuple.iter() {
            let s = item.cast::<PyString>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "key must be a str or a tuple of str; the tuple holds a {}",
                    type_name(&item)
                ))
            })?;
            out.push(s.clone().try_into()?);
        }
        return Ok(out);
    }
    Err(PyTypeError::new_err(format!(
        "key must be a str or a tuple of str, not {}",
        type_name(obj)
    )))
}
