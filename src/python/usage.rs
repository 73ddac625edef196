//! `usagewarden.Usage`: an immutable usage vector.

use super::args::UsageArgs;
use crate::usage::{nanos_to_usd, Usage};
use pyo3::basic::CompareOp;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::hash::{DefaultHasher, Hash, Hasher};

#[pyclass(frozen, freelist = 64, name = "Usage", module = "usagewarden")]
#[derive(Clone)]
pub struct PyUsage {
    pub(crate) inner: Usage,
}

impl From<Usage> for PyUsage {
    fn from(inner: Usage) -> Self {
        PyUsage { inner }
    }
}

#[pymethods]
impl PyUsage {
    #[new]
    #[pyo3(
        signature = (requests=None, input_tokens=None, output_tokens=None, cache_read_tokens=None, cache_write_tokens=None, cost=None),
        text_signature = "(requests=0, input_tokens=0, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0, cost=0.0)"
    )]
    fn new(
        requests: Option<&Bound<'_, PyAny>>,
        input_tokens: Option<&Bound<'_, PyAny>>,
        output_tokens: Option<&Bound<'_, PyAny>>,
        cache_read_tokens: Option<&Bound<'_, PyAny>>,
        cache_write_tokens: Option<&Bound<'_, PyAny>>,
        cost: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let args = UsageArgs {
            requests,
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_write_tokens,
            cost,
        };
        Ok(args.to_usage(0)?.into())
    }

    #[getter]
    fn requests(&self) -> u64 {
        self.inner.requests
    }
    #[getter]
    fn input_tokens(&self) -> u64 {
        self.inner.input_tokens
    }
    #[getter]
    fn output_tokens(&self) -> u64 {
        self.inner.output_tokens
    }
    #[getter]
    fn cache_read_tokens(&self) -> u64 {
        self.inner.cache_read_tokens
    }
    #[getter]
    fn cache_write_tokens(&self) -> u64 {
        self.inner.cache_write_tokens
    }
    /// Cost in USD.
    #[getter]
    fn cost(&self) -> f64 {
        nanos_to_usd(self.inner.cost_nanos)
    }
    /// `input_tokens + output_tokens`.
    #[getter]
    fn total_tokens(&self) -> u64 {
        self.inner.total_tokens()
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let u = &self.inner;
        d.set_item("requests", u.requests)?;
        d.set_item("input_tokens", u.input_tokens)?;
        d.set_item("output_tokens", u.output_tokens)?;
        d.set_item("cache_read_tokens", u.cache_read_tokens)?;
        d.set_item("cache_write_tokens", u.cache_write_tokens)?;
        d.set_item("cost", self.cost())?;
        Ok(d)
    }

    fn __add__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let Ok(other) = other.cast::<PyUsage>() else {
            return Ok(py.NotImplemented());
        };
        let sum = self
            .inner
            .checked_add(other.get().inner)
            .ok_or_else(|| PyValueError::new_err("Usage sum exceeds 2**63 - 1 in some field"))?;
        Ok(Py::new(py, PyUsage::from(sum))?.into_any())
    }

    fn __sub__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let Ok(other) = other.cast::<PyUsage>() else {
            return Ok(py.NotImplemented());
        };
        let difference = self
            .inner
            .checked_sub(other.get().inner)
            .map_err(|field| PyValueError::new_err(format!("{field} would be negative")))?;
        Ok(Py::new(py, PyUsage::from(difference))?.into_any())
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let equal = other
            .cast::<PyUsage>()
            .ok()
            .map(|o| self.inner == o.get().inner);
        crate::python::errors::compare_eq(other.py(), equal, op)
    }

    fn __hash__(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.inner.hash(&mut h);
        h.finish()
    }

    fn __bool__(&self) -> bool {
        !self.inner.is_zero()
    }

    fn __repr__(&self) -> String {
        self.inner.to_string()
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let u = slf.get().inner;
        let args = (
            u.requests,
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens,
            nanos_to_usd(u.cost_nanos),
        )
            .into_pyobject(slf.py())?;
        Ok((slf.get_type().into_any(), args))
    }
}
