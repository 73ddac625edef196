//! `Pricing`: model prices and the cost of a call.

use crate::pricing::{Pricing, Tokens};
use crate::python::errors::IntoPyResult;
use crate::python::ledger::{pytime, PyUsageEvent};
use crate::python::usage::PyUsage;
use crate::usage::nanos_to_usd;
use pyo3::exceptions::{
    PyFileNotFoundError, PyOSError, PyPermissionError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Arc;

/// Model prices in USD per million tokens (input, output, cache read, cache
/// write; tiers above a number of input tokens; dates they take effect).
#[pyclass(frozen, name = "Pricing", module = "usagewarden")]
pub struct PyPricing {
    pub(crate) inner: Arc<Pricing>,
}

fn parse_object(text: &str, what: &str) -> PyResult<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(PyValueError::new_err(format!(
            "{what}: must be a JSON object of model name to prices"
        ))),
        Err(e) => Err(PyValueError::new_err(format!(
            "{what}: is not valid JSON: {e}"
        ))),
    }
}

#[pymethods]
impl PyPricing {
    /// `{"gpt-4o": {"input": 2.5, "output": 10, "cache_read": 1.25}, "claude-*": {...}}`;
    /// a list of such objects with `effective_from` for prices that changed.
    #[staticmethod]
    fn from_dict(py: Python<'_>, prices: &Bound<'_, PyAny>) -> PyResult<Self> {
        if !prices.is_instance_of::<PyDict>() {
            return Err(PyTypeError::new_err(format!(
                "prices must be a dict, not {}",
                prices.get_type().name()?
            )));
        }
        let json = py.import("json")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("allow_nan", false)?;
        // Datetimes (for `effective_from`) become ISO 8601 text.
        kwargs.set_item(
            "default",
            py.eval(c"lambda value: value.isoformat()", None, None)?,
        )?;
        let text: String = json
            .call_method("dumps", (prices,), Some(&kwargs))
            .map_err(|e| PyValueError::new_err(format!("prices: {e}")))?
            .extract()?;
        let data = parse_object(&text, "prices")?;
        let pricing = Pricing::from_json_object(&data).py_err(py)?;
        Ok(PyPricing {
            inner: Arc::new(pricing),
        })
    }

    /// The price table of the `genai-prices` package, when it is installed.
    #[staticmethod]
    fn from_genai_prices(py: Python<'_>) -> PyResult<Self> {
        let table = py
            .import("usagewarden._genai_prices")?
            .call_method0("price_table")?;
        Self::from_dict(py, &table)
    }

    /// LiteLLM's `model_prices_and_context_window.json` (or a file with the same fields).
    #[staticmethod]
    fn from_litellm_json(py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<Self> {
        let path: std::path::PathBuf = py
            .import("os")?
            .call_method1("fspath", (path,))
            .and_then(|p| p.extract())
            .map_err(|_| PyTypeError::new_err("path must be a str or os.PathLike"))?;
        let text = py.detach(|| std::fs::read_to_string(&path)).map_err(|e| {
            let message = format!("path: cannot read {}: {e}", path.display());
            // A missing or unreadable file is an OSError, as `open()` raises.
            match e.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
                std::io::ErrorKind::InvalidData => PyValueError::new_err(message),
                _ => PyOSError::new_err(message),
            }
        })?;
        let data = parse_object(&text, "path")?;
        let pricing = Pricing::from_litellm(&data).py_err(py)?;
        Ok(PyPricing {
            inner: Arc::new(pricing),
        })
    }

    /// The cost in USD of `usage` (a `Usage` or a `UsageEvent`; input tokens
    /// include cached ones) on `model` at `at` (an aware datetime; default
    /// now); `None` when the model has no price.
    #[pyo3(signature = (model, usage, at=None))]
    fn cost(
        &self,
        model: &str,
        usage: &Bound<'_, PyAny>,
        at: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<f64>> {
        let tokens = if let Ok(u) = usage.cast::<PyUsage>() {
            let u = &u.get().inner;
            Tokens {
                input: u.input_tokens,
                output: u.output_tokens,
                cache_read: u.cache_read_tokens,
                cache_write: u.cache_write_tokens,
            }
        } else if let Ok(e) = usage.cast::<PyUsageEvent>() {
            Tokens::from(e.get().inner.as_ref())
        } else {
            return Err(PyTypeError::new_err(
                "usage must be a usagewarden.Usage or UsageEvent",
            ));
        };
        let at_us = match at {
            Some(t) if !t.is_none() => pytime::to_us(t, "at", false)?,
            _ => pytime::now_us(),
        };
        Ok(self
            .inner
            .cost_nanos(model, &tokens, at_us)
            .map(nanos_to_usd))
    }

    /// Every model name and pattern priced.
    fn models(&self) -> Vec<String> {
        self.inner.models()
    }

    fn __contains__(&self, model: &str) -> bool {
        self.inner.price(model, i64::MAX).is_some()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!("Pricing({} models)", self.inner.len())
    }
}
