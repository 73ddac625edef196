//! The asyncio bridge.
//!
//! `RateLimiter.acquire` returns an [`AcquireCoroutine`]: a coroutine object
//! implemented in Rust (it has `send`, `throw`, `close` and `__await__`, so
//! `await`, `asyncio.create_task` and `asyncio.wait_for` all take it). Like an
//! `async def`, it does nothing until first awaited. When the request is
//! admitted at once it finishes on the first `send`, with no event-loop round
//! trip. Otherwise it parks on an asyncio future of the caller's loop while
//! the wait runs as a task on the one tokio runtime of pyo3-async-runtimes
//! (see `bridge`). Cancelling the awaiting task cancels that future, which
//! drops the wait (leaving the queue); a grant that races with cancellation
//! is refunded.

use super::bridge::{self, Payload};
use super::errors;
use super::reservation::PyReservation;
use crate::limiter::{Limiter, Started};
use crate::usage::Usage;
use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;
use std::sync::Arc;

/// An awaitable that returns `value` on its first step, never yielding to the
/// loop: `usagewarden._completed.completed(value)`, a native coroutine, which
/// the interpreter creates and finishes faster than any object built here.
pub(crate) fn completed<'py>(
    py: Python<'py>,
    value: impl IntoPyObject<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    static COMPLETED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    COMPLETED
        .import(py, "usagewarden._completed", "completed")?
        .call1((value,))
}

pub(crate) struct AcquireArgs {
    pub(crate) limiter: Arc<dyn Limiter>,
    pub(crate) keys: super::args::Keys,
    pub(crate) key: Py<PyAny>,
    pub(crate) usage: Usage,
    pub(crate) timeout_ns: Option<u64>,
}

enum State {
    /// Not started: nothing is recorded until the first `send`.
    Pending(AcquireArgs),
    /// Parked on an asyncio future: `(future, its __await__ iterator)`.
    Waiting(Py<PyAny>, Py<PyAny>),
    Finished,
}

/// A coroutine object over one acquire.
#[pyclass(name = "AcquireCoroutine", module = "usagewarden._core")]
pub struct AcquireCoroutine {
    state: Mutex<State>,
}

/// The `StopIteration` that returns `value` from an `await`. A value that is
/// not a tuple is passed as the exception's value itself: the interpreter
/// then takes it without building the exception object (a tuple would be
/// read as the exception's arguments, so it is wrapped).
fn stop(py: Python<'_>, value: Py<PyAny>) -> PyErr {
    if value.bind(py).is_instance_of::<PyTuple>() {
        PyStopIteration::new_err((value,))
    } else {
        PyStopIteration::new_err(value)
    }
}

impl AcquireCoroutine {
    pub(crate) fn pending(args: AcquireArgs) -> AcquireCoroutine {
        AcquireCoroutine {
            state: Mutex::new(State::Pending(args)),
        }
    }

    fn take(&self) -> State {
        std::mem::replace(&mut *self.state.lock(), State::Finished)
    }

    fn start(&self, py: Python<'_>, args: AcquireArgs) -> PyResult<Py<PyAny>> {
        let names = super::limiter_methods::names(&args.keys);
        let started = args
            .limiter
            .start_acquire(&names, args.usage, args.timeout_ns)
            .map_err(|e| errors::to_py(py, e))?;
        match started {
            Started::Granted(core) => {
                let reservation = Py::new(
                    py,
                    PyReservation {
                        core,
                        key: args.key,
                    },
                )?;
                Err(stop(py, reservation.into_any()))
            }
            Started::Waiting(wait, cancel) => {
                // `cancel` leaves the queue as soon as the future is cancelled,
                // not when the tokio task gets round to dropping the wait.
                let key = args.key;
                let future =
                    bridge::spawn(py, async move { Payload::Grant(wait.await, key) }, cancel)?;
                let iter = future.call_method0("__await__")?;
                let yielded = iter.call_method0("__next__");
                *self.state.lock() = State::Waiting(future.unbind(), iter.unbind());
                yielded.map(Bound::unbind)
            }
        }
    }

    fn resume(
        &self,
        py: Python<'_>,
        method: &str,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<PyAny>> {
        match self.take() {
            State::Waiting(future, iter) => {
                if method == "throw" {
                    // The awaiting task is being cancelled (or thrown into): a
                    // grant already delivered would never reach it.
                    bridge::refund_delivered(future.bind(py));
                }
                let out = iter.bind(py).call_method1(method, args);
                if out.is_ok() {
                    *self.state.lock() = State::Waiting(future, iter);
                }
                out.map(Bound::unbind)
            }
            State::Pending(args) if method == "send" => self.start(py, args),
            State::Finished if method == "send" => Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            )),
            _ => {
                // throw() before the coroutine started: raise what was thrown.
                let exc = args.get_item(0)?;
                Err(
                    if exc.is_instance_of::<pyo3::exceptions::PyBaseException>() {
                        PyErr::from_value(exc)
                    } else {
                        PyErr::from_value(exc.call0()?)
                    },
                )
            }
        }
    }
}

#[pymethods]
impl AcquireCoroutine {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        // The first step of an `await`: a request admitted at once finishes
        // here without building an argument tuple.
        match self.take() {
            State::Pending(args) => self.start(py, args),
            other => {
                *self.state.lock() = other;
                self.resume(py, "send", PyTuple::new(py, [py.None()])?)
            }
        }
    }

    fn send(&self, py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
        self.resume(py, "send", PyTuple::new(py, [value])?)
    }

    #[pyo3(signature = (*args))]
    fn throw(&self, py: Python<'_>, args: Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        self.resume(py, "throw", args)
    }

    /// Stops waiting: the request leaves the queue and records nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let State::Waiting(future, _) = self.take() {
            bridge::refund_delivered(future.bind(py));
            future.bind(py).call_method0("cancel")?;
        }
        Ok(())
    }
}

impl Drop for AcquireCoroutine {
    fn drop(&mut self) {
        if let State::Waiting(future, _) = self.take() {
            Python::attach(|py| {
                bridge::refund_delivered(future.bind(py));
                let _ = future.bind(py).call_method0("cancel");
            });
        }
    }
}
