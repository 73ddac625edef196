//! Aware datetimes at the edge, integer UTC microseconds inside.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;

struct DateTimeApi {
    datetime: Py<PyAny>,
    timedelta: Py<PyAny>,
    epoch: Py<PyAny>,
}

fn api(py: Python<'_>) -> PyResult<&DateTimeApi> {
    static API: PyOnceLock<DateTimeApi> = PyOnceLock::new();
    API.get_or_try_init(py, || {
        let module = py.import("datetime")?;
        let utc = module.getattr("timezone")?.getattr("utc")?;
        let datetime = module.getattr("datetime")?;
        let epoch = datetime.call1((1970, 1, 1, 0, 0, 0, 0, utc))?;
        Ok(DateTimeApi {
            datetime: datetime.unbind(),
            timedelta: module.getattr("timedelta")?.unbind(),
            epoch: epoch.unbind(),
        })
    })
}

/// An aware `datetime` (or an ISO 8601 string with an offset, when
/// `allow_str`) as UTC microseconds. Naive datetimes are refused.
pub(crate) fn to_us(value: &Bound<'_, PyAny>, name: &str, allow_str: bool) -> PyResult<i64> {
    let py = value.py();
    let api = api(py)?;
    if allow_str {
        if let Ok(text) = value.cast::<PyString>() {
            let text = text.to_cow()?;
            return chrono::DateTime::parse_from_rfc3339(&text)
                .map(|t| t.timestamp_micros())
                .map_err(|_| {
                    PyValueError::new_err(format!(
                        "{name} must be an ISO 8601 time with an offset (e.g. 2026-02-14T12:00:00+00:00), got {text:?}"
                    ))
                });
        }
    }
    if !value.is_instance(api.datetime.bind(py))? {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a timezone-aware datetime, not {}",
            value.get_type().name()?
        )));
    }
    if value.call_method0("utcoffset")?.is_none() {
        return Err(PyValueError::new_err(format!(
            "{name} must be timezone-aware; a naive datetime is ambiguous. \
             Use datetime.now(timezone.utc), or dt.replace(tzinfo=timezone.utc) if it is in UTC"
        )));
    }
    let delta = value.sub(api.epoch.bind(py))?;
    let days: i64 = delta.getattr("days")?.extract()?;
    let seconds: i64 = delta.getattr("seconds")?.extract()?;
    let micros: i64 = delta.getattr("microseconds")?.extract()?;
    Ok(days * 86_400_000_000 + seconds * 1_000_000 + micros)
}

pub(crate) fn optional_us(value: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<i64>> {
    match value {
        Some(v) if !v.is_none() => to_us(v, name, false).map(Some),
        _ => Ok(None),
    }
}

/// UTC microseconds as an aware `datetime` in UTC.
pub(crate) fn from_us(py: Python<'_>, us: i64) -> PyResult<Bound<'_, PyAny>> {
    let api = api(py)?;
    let delta = api.timedelta.bind(py).call1((0, 0, us))?;
    api.epoch.bind(py).add(delta)
}

pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
