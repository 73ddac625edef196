//! The methods every limiter class shares (`RateLimiter`, `RedisRateLimiter`):
//! one macro over the core `Limiter` trait, so the Python surface of every
//! backend is the same code. A backend that waits on the network releases
//! the GIL around each call; the in-process one (100 ns of work) does not.

use super::args::{self, UsageArgs};
use super::errors::{self, IntoPyResult};
use super::limiter::{into_py_decision, key_object, PyDecision};
use crate::error::CoreError;
use crate::limiter::{Limiter, Observation};
use crate::usage::{Dimension, Usage};
use pyo3::prelude::*;
use smallvec::SmallVec;

/// Runs `f`, with the GIL released when the backend may wait on I/O.
pub(crate) fn run<R: Send>(py: Python<'_>, waits_on_io: bool, f: impl FnOnce() -> R + Send) -> R {
    if waits_on_io {
        py.detach(f)
    } else {
        f()
    }
}

pub(crate) fn names(keys: &args::Keys) -> SmallVec<[&str; 2]> {
    keys.iter().map(|k| &**k).collect()
}

pub(crate) fn decide<L: Limiter>(
    core: &L,
    waits_on_io: bool,
    py: Python<'_>,
    key: Option<&Bound<'_, PyAny>>,
    usage: UsageArgs<'_, '_>,
    record: bool,
) -> PyResult<PyDecision> {
    let keys = args::keys(py, key)?;
    let usage = usage.to_usage(1)?;
    if waits_on_io {
        if let Some(decided) = core.decide_without_io(&names(&keys), usage, record) {
            return Ok(into_py_decision(
                py,
                decided.py_err(py)?,
                key_object(py, key),
            ));
        }
    }
    let decision = run(py, waits_on_io, || {
        let names = names(&keys);
        if record {
            core.try_acquire(&names, usage)
        } else {
            core.check(&names, usage)
        }
    })
    .py_err(py)?;
    Ok(into_py_decision(py, decision, key_object(py, key)))
}

pub(crate) fn blocking_error(py: Python<'_>, err: CoreError, interrupt: Option<PyErr>) -> PyErr {
    match (err, interrupt) {
        (CoreError::Interrupted, Some(signal)) => signal,
        (err, _) => errors::to_py(py, err),
    }
}

pub(crate) fn acquire_blocking<L: Limiter>(
    core: &L,
    py: Python<'_>,
    key: Option<&Bound<'_, PyAny>>,
    usage: Usage,
    timeout_ns: Option<u64>,
) -> PyResult<super::reservation::PyReservation> {
    let keys = args::keys(py, key)?;
    let mut interrupt: Option<PyErr> = None;
    let result = py.detach(|| {
        core.acquire_blocking(&names(&keys), usage, timeout_ns, &mut || {
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
        Ok(core) => Ok(super::reservation::PyReservation {
            core,
            key: key_object(py, key),
        }),
        Err(e) => Err(blocking_error(py, e, interrupt)),
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

/// `#[pymethods]` for a limiter class with a `core` implementing `Limiter`,
/// plus the class's own methods given in braces.
macro_rules! limiter_methods {
    ($class:ident, waits_on_io = $io:expr, { $($extra:tt)* }) => {
        #[pymethods]
        impl $class {
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
            ) -> PyResult<$crate::python::limiter::PyDecision> {
                let usage = $crate::python::args::UsageArgs {
                    requests,
                    input_tokens,
                    output_tokens,
                    cache_read_tokens,
                    cache_write_tokens,
                    cost,
                };
                $crate::python::limiter_methods::decide(&self.core, $io, py, key, usage, true)
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
            ) -> PyResult<$crate::python::limiter::PyDecision> {
                let usage = $crate::python::args::UsageArgs {
                    requests,
                    input_tokens,
                    output_tokens,
                    cache_read_tokens,
                    cache_write_tokens,
                    cost,
                };
                $crate::python::limiter_methods::decide(&self.core, $io, py, key, usage, false)
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
            ) -> PyResult<$crate::python::asyncio::AcquireCoroutine> {
                let usage = $crate::python::args::UsageArgs {
                    requests,
                    input_tokens,
                    output_tokens,
                    cache_read_tokens,
                    cache_write_tokens,
                    cost,
                };
                Ok($crate::python::asyncio::AcquireCoroutine::pending(
                    $crate::python::asyncio::AcquireArgs {
                        limiter: std::sync::Arc::new(self.core.clone()),
                        keys: $crate::python::args::keys(py, key)?,
                        key: $crate::python::limiter::key_object(py, key),
                        usage: usage.to_usage(1)?,
                        timeout_ns: $crate::python::args::optional_seconds(timeout, "timeout", false)?,
                    },
                ))
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
            ) -> PyResult<$crate::python::reservation::PyReservation> {
                let usage = $crate::python::args::UsageArgs {
                    requests,
                    input_tokens,
                    output_tokens,
                    cache_read_tokens,
                    cache_write_tokens,
                    cost,
                };
                let usage = usage.to_usage(1)?;
                let timeout_ns = $crate::python::args::optional_seconds(timeout, "timeout", false)?;
                $crate::python::limiter_methods::acquire_blocking(&self.core, py, key, usage, timeout_ns)
            }

            /// Admits nothing on `key` (every key of a tuple) for `seconds` from
            /// now, as after a provider's 429 with Retry-After. A longer pause
            /// extends one in force; a shorter one changes nothing.
            fn pause(&self, py: Python<'_>, key: &Bound<'_, PyAny>, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
                use $crate::python::errors::IntoPyResult;
                let keys = $crate::python::args::keys(py, Some(key))?;
                let duration = $crate::python::args::seconds(seconds, "seconds", true)?;
                let core = &self.core;
                $crate::python::limiter_methods::run(py, $io, || {
                    $crate::limiter::Limiter::pause(core, &$crate::python::limiter_methods::names(&keys), duration)
                })
                .py_err(py)
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
                use $crate::python::errors::IntoPyResult;
                use $crate::usage::Dimension;
                let keys = $crate::python::args::keys(py, Some(key))?;
                let observations = $crate::python::limiter_methods::observations(&[
                    (Dimension::Requests, remaining_requests, reset_requests, "requests"),
                    (Dimension::TotalTokens, remaining_tokens, reset_tokens, "tokens"),
                    (Dimension::InputTokens, remaining_input_tokens, reset_input_tokens, "input_tokens"),
                    (Dimension::OutputTokens, remaining_output_tokens, reset_output_tokens, "output_tokens"),
                ])?;
                let core = &self.core;
                $crate::python::limiter_methods::run(py, $io, || {
                    $crate::limiter::Limiter::observe(core, &$crate::python::limiter_methods::names(&keys), &observations)
                })
                .py_err(py)
            }

            /// Usage counted for `key` within the longest limit window, or within
            /// the last `window_seconds`.
            #[pyo3(signature = (key=None, window_seconds=None), text_signature = "(self, key='default', window_seconds=None)")]
            fn usage(
                &self,
                py: Python<'_>,
                key: Option<&Bound<'_, PyAny>>,
                window_seconds: Option<&Bound<'_, PyAny>>,
            ) -> PyResult<$crate::python::usage::PyUsage> {
                use $crate::python::errors::IntoPyResult;
                let keys = $crate::python::args::keys(py, key)?;
                if keys.len() != 1 {
                    return Err(pyo3::exceptions::PyValueError::new_err("key: usage() takes a single key"));
                }
                let span = $crate::python::args::optional_seconds(window_seconds, "window_seconds", true)?;
                let core = &self.core;
                $crate::python::limiter_methods::run(py, $io, || $crate::limiter::Limiter::usage(core, &keys[0], span))
                    .py_err(py)
                    .map($crate::python::usage::PyUsage::from)
            }

            /// What could still be admitted now on `key` (every key of a tuple).
            /// Fields without a limit read 2**63 - 1.
            #[pyo3(signature = (key=None), text_signature = "(self, key='default')")]
            fn remaining(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> PyResult<$crate::python::usage::PyUsage> {
                use $crate::python::errors::IntoPyResult;
                let keys = $crate::python::args::keys(py, key)?;
                let core = &self.core;
                $crate::python::limiter_methods::run(py, $io, || {
                    $crate::limiter::Limiter::remaining(core, &$crate::python::limiter_methods::names(&keys))
                })
                .py_err(py)
                .map($crate::python::usage::PyUsage::from)
            }

            /// Forgets the usage of `key`, or of every key. Waiters stay queued.
            #[pyo3(signature = (key=None))]
            fn reset(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
                use $crate::python::errors::IntoPyResult;
                let keys = match key.filter(|k| !k.is_none()) {
                    None => None,
                    Some(k) => Some($crate::python::args::keys(py, Some(k))?),
                };
                let core = &self.core;
                $crate::python::limiter_methods::run(py, $io, || match &keys {
                    None => $crate::limiter::Limiter::reset(core, None),
                    Some(keys) => keys
                        .iter()
                        .try_for_each(|k| $crate::limiter::Limiter::reset(core, Some(k))),
                })
                .py_err(py)
            }

            $($extra)*
        }
    };
}

pub(crate) use limiter_methods;
