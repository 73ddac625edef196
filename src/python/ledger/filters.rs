//! Ledger filter keywords.

use super::pytime;
use crate::ledger::filters::Filters;
use crate::python::args;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

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
            "namespace" => f.namespace = args::optional_text(Some(&value), "namespace")?,
            "agent_id" => f.agent_id = args::optional_text(Some(&value), "agent_id")?,
            "consumer_id" => f.consumer_id = args::optional_text(Some(&value), "consumer_id")?,
            "task_id" => f.task_id = args::optional_text(Some(&value), "task_id")?,
            "model" => f.model = args::optional_text(Some(&value), "model")?,
            "action" => f.action = args::optional_text(Some(&value), "action")?,
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
