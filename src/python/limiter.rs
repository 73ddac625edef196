//! `usagewarden.RateLimiter` and `usagewarden.Decision`.

use super::args::{self, Keys, UsageArgs};
use super::asyncio::{AcquireArgs, AcquireCoroutine};
use super::clock::ClockArg;
use super::errors::{self, IntoPyResult};
use super::limits::{PyLimit, PyRateLimits};
use super::reservation::PyReservation;
use super::usage::PyUsage;
use crate::clock::ns_to_seconds;
use crate::error::CoreError;
use crate::limiter::{Decision, LimiterSnapshot, Observation, RateLimiter, Reservation};
use crate::limits::LimitSpec;
use crate::usage::{Dimension, Usage};
use parking_lot::Mutex;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

fn key_object(py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> Py<PyAny> {
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
    core: RateLimiter,
    limits: Py<PyRateLimits>,
    per_key: Py<PyDict>,
    clock: ClockArg,
}

impl PyRateLimiter {
    fn decide(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        usage: UsageArgs<'_, '_>,
        record: bool,
    ) -> PyResult<PyDecision> {
        let keys = args::keys(py, key)?;
        let usage = usage.to_usage(1)?;
        let decision = if record {
            self.core.try_acquire(&keys, usage)
        } else {
            self.core.check(&keys, usage)
        }
        .py_err(py)?;
        Ok(into_py_decision(py, decision, key_object(py, key)))
    }
}

fn into_py_decision(_py: Python<'_>, d: Decision, key: Py<PyAny>) -> PyDecision {
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

type ObservedArgs<'a, 'py> = (
    Dimension,
    Option<&'a Bound<'py, PyAny>>,
    Option<&'a Bound<'py, PyAny>>,
    &'static str,
);

/// `observe()`'s keyword pairs, every one checked before any is applied.
pub(crate) fn observations(given: &[ObservedArgs<'_, '_>]) -> PyResult<Vec<Observation>> {
    let mut out = Vec::new();
    for (dimension, remaining, reset, name) in given {
        let remaining = args::optional_count(*remaining, &format!("remaining_{name}"))?;
        let reset_ns = args::optional_seconds(*reset, &format!("reset_{name}"), false)?;
        if let Some(remaining) = remaining {
            out.push(Observation {
                dimension: *dimension,
                remaining,
                reset_ns,
            });
        }
    }
    Ok(out)
}

fn blocking_error(py: Python<'_>, err: CoreError, interrupt: Option<PyErr>) -> PyErr {
    match (err, interrupt) {
        (CoreError::Interrupted, Some(signal)) => signal,
        (err, _) => errors::to_py(py, err),
    }
}

#[pymethods]
impl PyRateLimiter {
    #[new]
    #[pyo3(signature = (limits, *, per_key=None, clock=None))]
    fn new(
        py: Python<'_>,
        limits: &Bound<'_, PyAny>,
        per_key: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
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

    /// Admits the request now on every key, or on none; never waits.
    #[pyo3(signature = (key=None, *, requests=None, input_tokens=None, output_tokens=None, cache_read_tokens=None, cache_write_tokens=None, cost=None))]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(
        text_signature = "(self, key='default', *, requests=1, input_tokens=0, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0, cost=0.0)"
    )]
    fn try_acquire(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        requests: Option<&Bound<'_, PyAny>>,
        input_tokens: Option<&Bound<'_, PyAny>>,
        output_tokens: Option<&Bound<'_, PyAny>>,
        cache_read_tokens: Option<&Bound<'_, PyAny>>,
        cache_write_tokens: Option<&Bound<'_, PyAny>>,
        cost: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyDecision> {
        let usage = UsageArgs {
            requests,
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_write_tokens,
            cost,
        };
        self.decide(py, key, usage, true)
    }

    /// What `try_acquire` would decide now; records nothing.
    #[pyo3(signature = (key=None, *, requests=None, input_tokens=None, output_tokens=None, cache_read_tokens=None, cache_write_tokens=None, cost=None))]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(
        text_signature = "(self, key='default', *, requests=1, input_tokens=0, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0, cost=0.0)"
    )]
    fn check(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        requests: Option<&Bound<'_, PyAny>>,
        input_tokens: Option<&Bound<'_, PyAny>>,
        output_tokens: Option<&Bound<'_, PyAny>>,
        cache_read_tokens: Option<&Bound<'_, PyAny>>,
        cache_write_tokens: Option<&Bound<'_, PyAny>>,
        cost: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyDecision> {
        let usage = UsageArgs {
            requests,
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_write_tokens,
            cost,
        };
        self.decide(py, key, usage, false)
    }

    /// Waits without blocking the event loop until the request is admitted
    /// (FIFO per key), then returns its `Reservation`. Raises
    /// `RateLimitExceeded` on timeout, or at once for a request larger than a limit.
    #[pyo3(signature = (key=None, *, requests=None, input_tokens=None, output_tokens=None, cache_read_tokens=None, cache_write_tokens=None, cost=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(
        text_signature = "(self, key='default', *, requests=1, input_tokens=0, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0, cost=0.0, timeout=None)"
    )]
    fn acquire(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        requests: Option<&Bound<'_, PyAny>>,
        input_tokens: Option<&Bound<'_, PyAny>>,
        output_tokens: Option<&Bound<'_, PyAny>>,
        cache_read_tokens: Option<&Bound<'_, PyAny>>,
        cache_write_tokens: Option<&Bound<'_, PyAny>>,
        cost: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<AcquireCoroutine> {
        let usage = UsageArgs {
            requests,
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_write_tokens,
            cost,
        };
        Ok(AcquireCoroutine::pending(AcquireArgs {
            limiter: self.core.clone(),
            keys: args::keys(py, key)?,
            key: key_object(py, key),
            usage: usage.to_usage(1)?,
            timeout_ns: args::optional_seconds(timeout, "timeout", false)?,
        }))
    }

    /// Blocks this thread (with the GIL released) until the request is
    /// admitted; for code running in threads.
    #[pyo3(signature = (key=None, *, requests=None, input_tokens=None, output_tokens=None, cache_read_tokens=None, cache_write_tokens=None, cost=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(
        text_signature = "(self, key='default', *, requests=1, input_tokens=0, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0, cost=0.0, timeout=None)"
    )]
    fn acquire_blocking(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        requests: Option<&Bound<'_, PyAny>>,
        input_tokens: Option<&Bound<'_, PyAny>>,
        output_tokens: Option<&Bound<'_, PyAny>>,
        cache_read_tokens: Option<&Bound<'_, PyAny>>,
        cache_write_tokens: Option<&Bound<'_, PyAny>>,
        cost: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyReservation> {
        let usage = UsageArgs {
            requests,
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_write_tokens,
            cost,
        };
        let keys: Keys = args::keys(py, key)?;
        let usage = usage.to_usage(1)?;
        let timeout_ns = args::optional_seconds(timeout, "timeout", false)?;
        let core = &self.core;
        let mut interrupt: Option<PyErr> = None;
        let result = py.detach(|| {
            core.acquire_blocking(&keys, usage, timeout_ns, &mut || {
                Python::attach(|py| match py.check_signals() {
                    Ok(()) => false,
                    Err(e) => {
                        interrupt = Some(e);
                        true
                    }
                })
            })
        });
        match result {
            Ok(core) => Ok(PyReservation {
                core,
                key: key_object(py, key),
            }),
            Err(e) => Err(blocking_error(py, e, interrupt)),
        }
    }

    /// Admits nothing on `key` (every key of a tuple) for `seconds` from
    /// now, as after a provider's 429 with Retry-After. A longer pause
    /// extends one in force; a shorter one changes nothing.
    fn pause(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        seconds: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let keys = args::keys(py, Some(key))?;
        let duration = args::seconds(seconds, "seconds", true)?;
        self.core.pause(&keys, duration).py_err(py)
    }

    /// Follows a provider's rate-limit headers: `remaining_*` is how much
    /// more of that dimension (`tokens`: total tokens) the provider admits
    /// until `reset_*` seconds from now. Where it is below what the limiter
    /// would admit, the limiter admits no more than that until the reset.
    #[pyo3(signature = (key, *, remaining_requests=None, remaining_tokens=None, remaining_input_tokens=None, remaining_output_tokens=None, reset_requests=None, reset_tokens=None, reset_input_tokens=None, reset_output_tokens=None))]
    #[allow(clippy::too_many_arguments)]
    fn observe(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        remaining_requests: Option<&Bound<'_, PyAny>>,
        remaining_tokens: Option<&Bound<'_, PyAny>>,
        remaining_input_tokens: Option<&Bound<'_, PyAny>>,
        remaining_output_tokens: Option<&Bound<'_, PyAny>>,
        reset_requests: Option<&Bound<'_, PyAny>>,
        reset_tokens: Option<&Bound<'_, PyAny>>,
        reset_input_tokens: Option<&Bound<'_, PyAny>>,
        reset_output_tokens: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let keys = args::keys(py, Some(key))?;
        let observations = observations(&[
            (
                Dimension::Requests,
                remaining_requests,
                reset_requests,
                "requests",
            ),
            (
                Dimension::TotalTokens,
                remaining_tokens,
                reset_tokens,
                "tokens",
            ),
            (
                Dimension::InputTokens,
                remaining_input_tokens,
                reset_input_tokens,
                "input_tokens",
            ),
            (
                Dimension::OutputTokens,
                remaining_output_tokens,
                reset_output_tokens,
                "output_tokens",
            ),
        ])?;
        self.core.observe(&keys, &observations).py_err(py)
    }

    /// Usage counted for `key` within the longest limit window, or within
    /// the last `window_seconds`.
    #[pyo3(signature = (key=None, window_seconds=None), text_signature = "(self, key='default', window_seconds=None)")]
    fn usage(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        window_seconds: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyUsage> {
        let keys = args::keys(py, key)?;
        if keys.len() != 1 {
            return Err(PyValueError::new_err("key: usage() takes a single key"));
        }
        let span = args::optional_seconds(window_seconds, "window_seconds", true)?;
        self.core
            .usage(&keys[0], span)
            .py_err(py)
            .map(PyUsage::from)
    }

    /// What could still be admitted now on `key` (every key of a tuple).
    /// Fields without a limit read 2**63 - 1.
    #[pyo3(signature = (key=None), text_signature = "(self, key='default')")]
    fn remaining(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> PyResult<PyUsage> {
        let keys = args::keys(py, key)?;
        self.core.remaining(&keys).py_err(py).map(PyUsage::from)
    }

    /// Forgets the usage of `key`, or of every key. Waiters stay queued.
    #[pyo3(signature = (key=None))]
    fn reset(&self, key: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        match key.filter(|k| !k.is_none()) {
            None => self.core.reset(None),
            Some(k) => {
                for key in args::keys(k.py(), Some(k))? {
                    self.core.reset(Some(&key));
                }
            }
        }
        Ok(())
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
}
