//! `usagewarden.RateLimiter` and `usagewarden.Decision`.

use super::clock::ClockArg;
use super::limiter_methods::limiter_methods;
use super::limits::{PyLimit, PyRateLimits};
use super::reservation::PyReservation;
use super::usage::PyUsage;
use crate::clock::ns_to_seconds;
use crate::limiter::headers::{rate_limit_headers, Header, HeaderSet, HeaderSource};
use crate::limiter::{Decision, LimiterSnapshot, RateLimiter, Reservation};
use crate::limits::LimitSpec;
use crate::usage::Usage;
use parking_lot::Mutex;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

pub(crate) fn key_object(py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> Py<PyAny> {
    match key {
        Some(k) if !k.is_none() => k.clone().unbind(),
        _ => intern!(py, "default").clone().into_any().unbind(),
    }
}

enum Slot {
    None,
    Core(Reservation),
    Py(Py<PyReservation>),
}

/// The outcome of `try_acquire` or `check`. `bool(decision)` is `allowed`.
#[pyclass(frozen, freelist = 64, name = "Decision", module = "usagewarden")]
pub struct PyDecision {
    allowed: bool,
    retry_after_ns: Option<u64>,
    limit: Option<LimitSpec>,
    remaining: Usage,
    key: Py<PyAny>,
    reservation: Mutex<Slot>,
}

impl PyDecision {
    fn header_source(&self, which: &str) -> PyResult<HeaderSource<'_>> {
        let set = HeaderSet::parse(which).ok_or_else(|| {
            PyValueError::new_err(format!(
                "which: must be {}, got {which:?}",
                HeaderSet::CHOICES
            ))
        })?;
        Ok(HeaderSource {
            allowed: self.allowed,
            retry_after_ns: self.retry_after_ns,
            limit: self.limit.as_ref(),
            remaining: &self.remaining,
            set,
        })
    }
}

#[pymethods]
impl PyDecision {
    #[getter]
    fn allowed(&self) -> bool {
        self.allowed
    }

    /// Seconds until the request would fit: 0.0 when allowed, `None` when it never can.
    #[getter]
    fn retry_after(&self) -> Option<f64> {
        self.retry_after_ns.map(ns_to_seconds)
    }

    /// When refused, the limit that frees up last; when allowed, the limit
    /// with the smallest share left. `None` with no limits.
    #[getter]
    fn limit(&self) -> Option<PyLimit> {
        self.limit.map(PyLimit::from)
    }

    /// What could still be admitted (after this request, when allowed).
    /// Fields without a limit read 2**63 - 1.
    #[getter]
    fn remaining(&self) -> PyUsage {
        self.remaining.into()
    }

    #[getter]
    fn key(&self, py: Python<'_>) -> Py<PyAny> {
        self.key.clone_ref(py)
    }

    /// The reservation to settle or cancel, when allowed by `try_acquire`.
    #[getter]
    fn reservation(&self, py: Python<'_>) -> PyResult<Option<Py<PyReservation>>> {
        let mut slot = self.reservation.lock();
        match std::mem::replace(&mut *slot, Slot::None) {
            Slot::None => Ok(None),
            Slot::Py(r) => {
                *slot = Slot::Py(r.clone_ref(py));
                Ok(Some(r))
            }
            Slot::Core(core) => {
                let r = Py::new(
                    py,
                    PyReservation {
                        core,
                        key: self.key.clone_ref(py),
                    },
                )?;
                *slot = Slot::Py(r.clone_ref(py));
                Ok(Some(r))
            }
        }
    }

    fn __bool__(&self) -> bool {
        self.allowed
    }

    /// The HTTP headers of this decision for the limit that binds, names
    /// in their usual case: `RateLimit-Policy`, `RateLimit`, the older
    /// `RateLimit-Limit`/`-Remaining`/`-Reset` and `X-RateLimit-*`, and
    /// `Retry-After` when refused. `which`: "all", "draft" (the first two),
    /// "legacy" (the older six) or "none" (`Retry-After` alone).
    #[pyo3(signature = (which = "all"))]
    fn rate_limit_headers<'py>(
        &self,
        py: Python<'py>,
        which: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let headers = PyDict::new(py);
        for (header, value) in rate_limit_headers(&self.header_source(which)?) {
            headers.set_item(header.name(), value)?;
        }
        Ok(headers)
    }

    /// The same headers for an ASGI response: `(name, value)` byte pairs,
    /// names in lower case.
    #[pyo3(signature = (which = "all"))]
    fn asgi_rate_limit_headers<'py>(
        &self,
        py: Python<'py>,
        which: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        // The names are the same bytes objects on every response.
        static NAMES: PyOnceLock<Vec<Py<PyBytes>>> = PyOnceLock::new();
        let names = NAMES.get_or_init(py, || {
            Header::ALL
                .iter()
                .map(|header| PyBytes::new(py, header.lower_name().as_bytes()).unbind())
                .collect()
        });
        let pairs = rate_limit_headers(&self.header_source(which)?)
            .into_iter()
            .map(|(header, value)| {
                (
                    names[header as usize].clone_ref(py),
                    PyBytes::new(py, value.as_bytes()),
                )
            });
        PyList::new(py, pairs)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let retry = match self.retry_after_ns {
            Some(ns) => format!("{:?}", ns_to_seconds(ns)),
            None => "None".into(),
        };
        let limit = self
            .limit
            .map(|l| l.name())
            .unwrap_or_else(|| "None".into());
        Ok(format!(
            "Decision(allowed={}, key={}, retry_after={retry}, limit={limit})",
            if self.allowed { "True" } else { "False" },
            self.key.bind(py).repr()?
        ))
    }
}

/// A sharded, lock-safe sliding-window rate limiter shared by every thread
/// and task of the process. `key` is a str, or a tuple of str acquired
/// atomically on all keys or none. Limits apply per key: `per_key` maps a key
/// to its own `RateLimits`, other keys get `limits`.
#[pyclass(frozen, name = "RateLimiter", module = "usagewarden")]
pub struct PyRateLimiter {
    pub(crate) core: RateLimiter,
    limits: Py<PyRateLimits>,
    per_key: Py<PyDict>,
    clock: ClockArg,
}

pub(crate) fn into_py_decision(_py: Python<'_>, d: Decision, key: Py<PyAny>) -> PyDecision {
    PyDecision {
        allowed: d.allowed,
        retry_after_ns: d.retry_after_ns,
        limit: d.limit.map(|(_, spec)| spec),
        remaining: d.remaining,
        key,
        reservation: Mutex::new(match d.reservation {
            Some(r) => Slot::Core(r),
            None => Slot::None,
        }),
    }
}

/// `limits` and `per_key` as given to a limiter: the objects (a copy of the
/// dict) and the core limits of each overridden key.
pub(crate) type ParsedLimits<'py> = (
    Bound<'py, PyRateLimits>,
    Bound<'py, PyDict>,
    Vec<(String, crate::limits::Limits)>,
);

pub(crate) fn parse_limits<'py>(
    py: Python<'py>,
    limits: &Bound<'py, PyAny>,
    per_key: Option<&Bound<'py, PyAny>>,
) -> PyResult<ParsedLimits<'py>> {
    let limits = limits
        .cast::<PyRateLimits>()
        .map_err(|_| PyTypeError::new_err("limits must be a usagewarden.RateLimits"))?
        .clone();
    let per_key_copy = PyDict::new(py);
    let mut overrides = Vec::new();
    if let Some(per_key) = per_key.filter(|p| !p.is_none()) {
        let per_key = per_key.cast::<PyDict>().map_err(|_| {
            PyTypeError::new_err("per_key must be a dict of str to usagewarden.RateLimits")
        })?;
        for (k, v) in per_key.iter() {
            let name = k
                .cast::<PyString>()
                .map_err(|_| PyTypeError::new_err("per_key keys must be str"))?;
            let v_limits = v.cast::<PyRateLimits>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "per_key[{}] must be a usagewarden.RateLimits",
                    name.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?;
            overrides.push((name.to_cow()?.into_owned(), v_limits.get().limits.clone()));
            per_key_copy.set_item(&k, &v)?;
        }
    }
    Ok((limits, per_key_copy, overrides))
}

limiter_methods!(PyRateLimiter, waits_on_io = false, {
    #[new]
    #[pyo3(signature = (limits, *, per_key=None, clock=None))]
    fn new(
        py: Python<'_>,
        limits: &Bound<'_, PyAny>,
        per_key: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let (limits, per_key_copy, overrides) = parse_limits(py, limits, per_key)?;
        let clock = ClockArg::extract(clock)?;
        let core = RateLimiter::new(limits.get().limits.clone(), overrides, clock.clock.clone());
        Ok(PyRateLimiter {
            core,
            limits: limits.unbind(),
            per_key: per_key_copy.unbind(),
            clock,
        })
    }

    #[getter]
    fn limits(&self, py: Python<'_>) -> Py<PyRateLimits> {
        self.limits.clone_ref(py)
    }

    #[getter]
    fn per_key<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.per_key.bind(py).copy()
    }

    #[getter]
    fn clock(&self, py: Python<'_>) -> Py<PyAny> {
        self.clock.to_object(py)
    }

    /// Drops the state of idle keys now (it also happens by itself over time);
    /// returns how many were dropped.
    fn reclaim(&self) -> usize {
        self.core.reclaim()
    }

    /// Number of keys with state.
    fn __len__(&self) -> usize {
        self.core.len()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "RateLimiter({}, keys={})",
            self.limits.bind(py).repr()?,
            self.core.len()
        ))
    }

    #[classmethod]
    fn _restore<'py>(
        cls: &Bound<'py, pyo3::types::PyType>,
        limits: &Bound<'py, PyAny>,
        per_key: &Bound<'py, PyAny>,
        clock: &Bound<'py, PyAny>,
        state: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let snapshot: LimiterSnapshot = serde_json::from_str(state)
            .map_err(|e| PyValueError::new_err(format!("state: not a RateLimiter state ({e})")))?;
        let kwargs = PyDict::new(cls.py());
        kwargs.set_item("per_key", per_key)?;
        kwargs.set_item("clock", clock)?;
        let limiter = cls.call((limits,), Some(&kwargs))?;
        limiter
            .cast::<PyRateLimiter>()?
            .get()
            .core
            .restore(&snapshot);
        Ok(limiter)
    }

    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let py = slf.py();
        let this = slf.get();
        let state = serde_json::to_string(&this.core.snapshot()).expect("usage serialises");
        let args = (
            this.limits.clone_ref(py),
            this.per_key.bind(py).copy()?,
            this.clock.to_object(py),
            state,
        )
            .into_pyobject(py)?;
        Ok((slf.get_type().getattr("_restore")?, args))
    }
});
