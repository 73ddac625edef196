//! The asyncio bridge.
//!
//! `RateLimiter.acquire` returns an [`AcquireCoroutine`]: a coroutine object
//! implemented in Rust (it has `send`, `throw`, `close` and `__await__`, so
//! `await`, `asyncio.create_task` and `asyncio.wait_for` all take it). Like an
//! `async def`, it does nothing until first awaited. When the request is
//! admitted at once it finishes on the first `send`, with no event-loop round
//! trip. Otherwise it parks on an asyncio future of the caller's loop while
//! the wait runs as a task on the one tokio runtime of pyo3-async-runtimes;
//! the result is handed back with `call_soon_threadsafe`. Cancelling the
//! awaiting task cancels that future, which drops the wait (leaving the
//! queue); a grant that races with cancellation is refunded.

use super::errors;
use super::reservation::PyReservation;
use crate::error::CoreResult;
use crate::limiter::{Enqueued, RateLimiter, Reservation, WaitHandle};
use crate::usage::Usage;
use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;
use tokio::sync::oneshot;

pub(crate) struct AcquireArgs {
    pub(crate) limiter: RateLimiter,
    pub(crate) keys: super::args::Keys,
    pub(crate) key: Py<PyAny>,
    pub(crate) usage: Usage,
    pub(crate) timeout_ns: Option<u64>,
}

enum State {
    /// Not started: nothing is recorded until the first `send`.
    Pending(AcquireArgs),
    /// Already resolved (used for `__aenter__`/`__aexit__`).
    Ready(Py<PyAny>),
    /// Parked on an asyncio future: `(future, its __await__ iterator)`.
    Waiting(Py<PyAny>, Py<PyAny>),
    Finished,
}

/// A coroutine object over one acquire (or an already-known value).
#[pyclass(name = "AcquireCoroutine", module = "usagewarden._core")]
pub struct AcquireCoroutine {
    state: Mutex<State>,
}

fn stop(value: Py<PyAny>) -> PyErr {
    PyStopIteration::new_err((value,))
}

fn get_running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static ASYNCIO: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    ASYNCIO
        .get_or_try_init(py, || py.import("asyncio").map(Bound::unbind))?
        .bind(py)
        .call_method0("get_running_loop")
}

impl AcquireCoroutine {
    pub(crate) fn pending(args: AcquireArgs) -> AcquireCoroutine {
        AcquireCoroutine {
            state: Mutex::new(State::Pending(args)),
        }
    }

    pub(crate) fn ready(value: Py<PyAny>) -> AcquireCoroutine {
        AcquireCoroutine {
            state: Mutex::new(State::Ready(value)),
        }
    }

    fn take(&self) -> State {
        std::mem::replace(&mut *self.state.lock(), State::Finished)
    }

    fn start(&self, py: Python<'_>, args: AcquireArgs) -> PyResult<Py<PyAny>> {
        let enqueued = args
            .limiter
            .enqueue(&args.keys, args.usage, args.timeout_ns)
            .map_err(|e| errors::to_py(py, e))?;
        match enqueued {
            Enqueued::Granted(core) => {
                let reservation = Py::new(
                    py,
                    PyReservation {
                        core,
                        key: args.key,
                    },
                )?;
                Err(stop(reservation.into_any()))
            }
            Enqueued::Waiting(handle) => {
                let future = spawn_wait(py, handle, args.key)?;
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
                let out = iter.bind(py).call_method1(method, args);
                if out.is_ok() {
                    *self.state.lock() = State::Waiting(future, iter);
                }
                out.map(Bound::unbind)
            }
            State::Pending(args) if method == "send" => self.start(py, args),
            State::Ready(value) if method == "send" => Err(stop(value)),
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
        self.resume(py, "send", PyTuple::new(py, [py.None()])?)
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
            future.bind(py).call_method0("cancel")?;
        }
        Ok(())
    }
}

impl Drop for AcquireCoroutine {
    fn drop(&mut self) {
        if let State::Waiting(future, _) = self.take() {
            Python::attach(|py| {
                let _ = future.bind(py).call_method0("cancel");
            });
        }
    }
}

/// Tells the tokio task that the asyncio future was cancelled.
#[pyclass]
struct CancelOnDone {
    tx: Mutex<Option<oneshot::Sender<()>>>,
}

#[pymethods]
impl CancelOnDone {
    fn __call__(&self, _future: &Bound<'_, PyAny>) {
        if let Some(tx) = self.tx.lock().take() {
            let _ = tx.send(());
        }
    }
}

/// Runs on the event loop's thread: resolves the future, or refunds a grant
/// nobody is waiting for any more. Dropped undelivered, it refunds too.
#[pyclass]
struct Deliver {
    result: Mutex<Option<CoreResult<Reservation>>>,
    key: Py<PyAny>,
}

#[pymethods]
impl Deliver {
    fn __call__(&self, py: Python<'_>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(result) = self.result.lock().take() else {
            return Ok(());
        };
        if future.call_method0("done")?.is_truthy()? {
            if let Ok(reservation) = result {
                let _ = reservation.cancel();
            }
            return Ok(());
        }
        match result {
            Ok(core) => {
                let reservation = Py::new(
                    py,
                    PyReservation {
                        core,
                        key: self.key.clone_ref(py),
                    },
                )?;
                future.call_method1("set_result", (reservation,))?;
            }
            Err(e) => {
                future.call_method1("set_exception", (errors::to_py(py, e).into_value(py),))?;
            }
        }
        Ok(())
    }
}

impl Drop for Deliver {
    fn drop(&mut self) {
        if let Some(Ok(reservation)) = self.result.get_mut().take() {
            let _ = reservation.cancel();
        }
    }
}

fn spawn_wait<'py>(
    py: Python<'py>,
    handle: WaitHandle,
    key: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let event_loop = get_running_loop(py)?;
    let future = event_loop.call_method0("create_future")?;
    let (tx, rx) = oneshot::channel();
    future.call_method1(
        "add_done_callback",
        (CancelOnDone {
            tx: Mutex::new(Some(tx)),
        },),
    )?;
    let loop_ref = event_loop.unbind();
    let future_ref = future.clone().unbind();
    pyo3_async_runtimes::tokio::get_runtime().spawn(async move {
        let result = tokio::select! {
            result = handle.wait() => result,
            _ = rx => return, // cancelled: dropping the wait leaves the queue
        };
        Python::attach(|py| {
            let deliver = Deliver {
                result: Mutex::new(Some(result)),
                key,
            };
            // If the loop is closed the Deliver is dropped here, refunding the grant.
            let _ = loop_ref.call_method1(py, "call_soon_threadsafe", (deliver, future_ref));
        });
    });
    Ok(future)
}
