//! Ledger filter keywords.

use super::pytime;
use crate::ledger::filters::Filters;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

pub(crate) const FILTER_NAMES: [&str; 8] = [
    "namespace",
    "agent_id",
    "consumer_id",
    "task_id",
    "model",
    "action",
    "start",
    "end",
];

fn text(value: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<String>> {
    if value.is_none() {
        return Ok(None);
    }
    let s = value.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{name} must be a str, not {}",
            value
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    Ok(Some(s.to_cow()?.into_owned()))
}

/// Builds filters from keyword arguments; unknown keywords are a `TypeError`
/// that lists the valid ones. `start` and `end` are aware datetimes, inclusive.
pub(crate) fn from_kwargs(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Filters> {
    let mut f = Filters::default();
    let Some(kwargs) = kwargs else {
        return Ok(f);
    };
    for (key, value) in kwargs.iter() {
        let key: String = key.extract()?;
        match key.as_str() {
            "namespace" => f.namespace = text(&value, "namespace")?,
            "agent_id" => f.agent_id = text(&value, "agent_id")?,
            "consumer_id" => f.consumer_id = text(&value, "consumer_id")?,
            "task_id" => f.task_id = text(&value, "task_id")?,
            "model" => f.model = text(&value, "model")?,
            "action" => f.action = text(&value, "action")?,
            "start" => f.start_us = pytime::optional_us(Some(&value), "start")?,
            "end" => f.end_us = pytime::optional_us(Some(&value), "end")?,
            other => {
                return Err(PyTypeError::new_err(format!(
                    "unexpected filter {other:?}; valid filters are: {}",
                    FILTER_NAMES.join(", ")
                )))
            }
        }
    }
    Ok(f)
}
