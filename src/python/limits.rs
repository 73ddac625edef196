//! `usagewarden.RateLimits` and `usagewarden.Limit`.

use super::args;
use crate::clock::ns_to_seconds;
use crate::limits::{LimitSpec, Limits};
use crate::usage::{nanos_to_usd, Dimension};
use pyo3::basic::CompareOp;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

/// One limit: at most `amount` of `dimension` in any window of `window` seconds.
#[pyclass(frozen, name = "Limit", module = "usagewarden")]
#[derive(Clone, Copy)]
pub struct PyLimit {
    pub(crate) spec: LimitSpec,
}

impl From<LimitSpec> for PyLimit {
    fn from(spec: LimitSpec) -> Self {
        PyLimit { spec }
    }
}

fn amount_object(py: Python<'_>, spec: &LimitSpec) -> PyResult<Py<PyAny>> {
    Ok(match spec.dimension {
        Dimension::Cost => nanos_to_usd(spec.amount)
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        _ => spec.amount.into_pyobject(py)?.into_any().unbind(),
    })
}

#[pymethods]
impl PyLimit {
    /// The keyword it is written as, e.g. `total_tokens_per_minute`.
    #[getter]
    fn name(&self) -> String {
        self.spec.name()
    }
    #[getter]
    fn dimension(&self) -> &'static str {
        self.spec.dimension.name()
    }
    #[getter]
    fn unit(&self) -> &'static str {
        self.spec.unit.name()
    }
    /// Window length in seconds.
    #[getter]
    fn window(&self) -> f64 {
        ns_to_seconds(self.spec.window_ns())
    }
    /// The allowed amount: an int, or USD for cost.
    #[getter]
    fn amount(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        amount_object(py, &self.spec)
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let equal = other
            .cast::<PyLimit>()
            .ok()
            .map(|o| self.spec == o.get().spec);
        crate::python::errors::compare_eq(other.py(), equal, op)
    }

    #[staticmethod]
    fn _from_name(name: &str, amount: &Bound<'_, PyAny>) -> PyResult<PyLimit> {
        let kwargs = PyDict::new(amount.py());
        kwargs.set_item(name, amount)?;
        let limits = PyRateLimits::from_kwargs(Some(&kwargs))?;
        Ok(PyLimit::from(limits.limits.specs()[0]))
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let spec = slf.get().spec;
        let args = (spec.name(), amount_object(py, &spec)?).into_pyobject(py)?;
        Ok((slf.get_type().getattr("_from_name")?, args))
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        self.spec.hash(&mut h);
        h.finish()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Limit({}={})",
            self.spec.name(),
            amount_object(py, &self.spec)?.bind(py).repr()?
        ))
    }
}

/// Limits per dimension per window, given as keywords
/// `{dimension}_per_{unit}`: dimension one of requests, input_tokens,
/// output_tokens, total_tokens, cost (USD); unit one of second, minute,
/// hour, day. Several may be given at once.
#[pyclass(frozen, name = "RateLimits", module = "usagewarden")]
pub struct PyRateLimits {
    pub(crate) limits: Limits,
}

impl PyRateLimits {
    pub(crate) fn from_kwargs(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<PyRateLimits> {
        let mut specs = Vec::new();
        if let Some(kwargs) = kwargs {
            for (name, value) in kwargs.iter() {
                let name: String = name.extract()?;
                let Some((dimension, unit)) = LimitSpec::parse_name(&name) else {
                    return Err(PyTypeError::new_err(format!(
                        "RateLimits got an unexpected keyword {name:?}; valid keywords are: {}",
                        LimitSpec::valid_names().join(", ")
                    )));
                };
                let amount = match dimension {
                    Dimension::Cost => args::cost(Some(&value), &name)?,
                    _ => args::count(Some(&value), &name, 0)?,
                };
                if amount == 0 {
                    return Err(PyValueError::new_err(format!(
                        "{name} must be positive, got {value}"
                    )));
                }
                specs.push(LimitSpec::new(dimension, unit, amount));
            }
        }
        let limits = Limits::new(specs).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyRateLimits { limits })
    }
}

#[pymethods]
impl PyRateLimits {
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        PyRateLimits::from_kwargs(kwargs)
    }

    /// The limits, shortest window first.
    #[getter]
    fn limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.limits.specs().iter().map(|s| PyLimit::from(*s)))
    }

    /// `{keyword: amount}`; `RateLimits(**limits.to_dict())` rebuilds it.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for spec in self.limits.specs() {
            d.set_item(spec.name(), amount_object(py, spec)?)?;
        }
        Ok(d)
    }

    fn __len__(&self) -> usize {
        self.limits.specs().len()
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let equal = other
            .cast::<PyRateLimits>()
            .ok()
            .map(|o| self.limits == o.get().limits);
        crate::python::errors::compare_eq(other.py(), equal, op)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let mut parts = Vec::new();
        for spec in self.limits.specs() {
            parts.push(format!(
                "{}={}",
                spec.name(),
                amount_object(py, spec)?.bind(py).repr()?
            ));
        }
        Ok(format!("RateLimits({})", parts.join(", ")))
    }

    #[staticmethod]
    fn _from_dict(d: &Bound<'_, PyDict>) -> PyResult<Self> {
        PyRateLimits::from_kwargs(Some(d))
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let restore = slf.get_type().getattr("_from_dict")?;
        let args = (slf.get().to_dict(py)?,).into_pyobject(py)?;
        Ok((restore, args))
    }
}
