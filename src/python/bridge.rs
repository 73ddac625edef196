//! Resolving asyncio futures from tokio tasks, safely up to interpreter exit.
//!
//! A task's result is handed to the future's loop with
//! `call_soon_threadsafe`; a `Deliver` callback then sets it on the loop's
//! own thread, or refunds a rate-limit grant nobody awaits any more.
//!
//! CPython terminates a foreign thread that tries to take the GIL once
//! finalization has begun, and terminating a thread inside Rust frames
//! aborts the process. So every call into Python from a tokio thread is
//! counted, and an exit hook (`_quiesce`, registered with `atexit`) stops new
//! calls and waits, with the GIL released, for those in flight to finish.

use super::errors;
use super::reservation::PyReservation;
use crate::error::CoreResult;
use crate::limiter::Reservation;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// Runs `f` attached to the interpreter from a non-Python thread, unless the
/// interpreter is shutting down (then `None`, and `f` is not run).
pub(crate) fn from_foreign_thread<R>(f: impl FnOnce(Python<'_>) -> R) -> Option<R> {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let result = if SHUTTING_DOWN.load(Ordering::SeqCst) {
        None
    } else {
        Python::try_attach(f)
    };
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    result
}

/// Exit hook: no new calls from tokio threads; waits for those in flight.
#[pyfunction]
pub(crate) fn _quiesce(py: Python<'_>) {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = Instant::now() + Duration::from_secs(2);
        while IN_FLIGHT.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

pub(crate) fn get_running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static ASYNCIO: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    ASYNCIO
        .get_or_try_init(py, || py.import("asyncio").map(Bound::unbind))?
        .bind(py)
        .call_method0("get_running_loop")
}

/// Builds a task's result as a Python object, on the loop's thread.
pub(crate) type MakeValue = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// What a task hands back to its future.
pub(crate) enum Payload {
    /// A rate-limit wait: the reservation (refunded if undelivered) and the key.
    Grant(CoreResult<Reservation>, Py<PyAny>),
    /// Any other result, converted on the loop's thread.
    Value(MakeValue),
}

impl Payload {
    /// Gives back what cannot be delivered.
    fn abandon(self) {
        if let Payload::Grant(Ok(reservation), _) = &self {
            let _ = reservation.cancel();
        }
        // Python objects inside are released by their owners' drop or leaked
        // at shutdown (see `release`).
        release(self);
    }
}

/// Cancels the reservation a future was resolved with, if any: it was
/// granted, but the coroutine that would have returned it is going away.
pub(crate) fn refund_delivered(future: &Bound<'_, PyAny>) {
    let delivered = || -> PyResult<Option<Bound<'_, PyAny>>> {
        let done = future.call_method0("done")?.is_truthy()?;
        if !done || future.call_method0("cancelled")?.is_truthy()? {
            return Ok(None);
        }
        if !future.call_method0("exception")?.is_none() {
            return Ok(None);
        }
        future.call_method0("result").map(Some)
    };
    if let Ok(Some(result)) = delivered() {
        if let Ok(reservation) = result.cast::<PyReservation>() {
            let _ = reservation.get().core.cancel();
        }
    }
}

/// Work to undo at once, on the loop's thread, when a future is cancelled.
pub(crate) type OnCancel = Box<dyn FnOnce() + Send>;

/// Tells the task that its future was cancelled, and runs `on_cancel`.
#[pyclass]
struct CancelOnDone {
    tx: Mutex<Option<oneshot::Sender<()>>>,
    on_cancel: Mutex<Option<OnCancel>>,
}

#[pymethods]
impl CancelOnDone {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Some(tx) = self.tx.lock().take() {
            let _ = tx.send(());
        }
        if future.call_method0("cancelled")?.is_truthy()? {
            if let Some(undo) = self.on_cancel.lock().take() {
                undo();
            }
        }
        Ok(())
    }
}

/// Runs on the event loop's thread: resolves the future, or gives the
/// payload back if the future is already done (cancelled).
#[pyclass]
struct Deliver {
    payload: Mutex<Option<Payload>>,
}

#[pymethods]
impl Deliver {
    fn __call__(&self, py: Python<'_>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(payload) = self.payload.lock().take() else {
            return Ok(());
        };
        if future.call_method0("done")?.is_truthy()? {
            payload.abandon();
            return Ok(());
        }
        let outcome = match payload {
            Payload::Grant(Ok(core), key) => {
                Py::new(py, PyReservation { core, key }).map(Py::into_any)
            }
            Payload::Grant(Err(e), _) => Err(errors::to_py(py, e)),
            Payload::Value(make) => make(py),
        };
        match outcome {
            Ok(value) => future.call_method1("set_result", (value,))?,
            Err(e) => future.call_method1("set_exception", (e.into_value(py),))?,
        };
        Ok(())
    }
}

impl Drop for Deliver {
    fn drop(&mut self) {
        if let Some(payload) = self.payload.get_mut().take() {
            payload.abandon();
        }
    }
}

/// Python objects a task holds: dropped attached, or leaked at shutdown.
fn release<T>(held: T) {
    let mut slot = Some(held);
    let _ = from_foreign_thread(|_| drop(slot.take()));
    if let Some(held) = slot {
        std::mem::forget(held);
    }
}

/// Creates a future on the running loop and spawns `work` on the tokio
/// runtime; the payload it returns resolves the future. Cancelling the
/// future drops `work`.
pub(crate) fn spawn<'py, F>(
    py: Python<'py>,
    work: F,
    on_cancel: Option<OnCancel>,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Payload> + Send + 'static,
{
    let event_loop = get_running_loop(py)?;
    let future = event_loop.call_method0("create_future")?;
    let (tx, rx) = oneshot::channel();
    future.call_method1(
        "add_done_callback",
        (CancelOnDone {
            tx: Mutex::new(Some(tx)),
            on_cancel: Mutex::new(on_cancel),
        },),
    )?;
    let held = (event_loop.unbind(), future.clone().unbind());
    pyo3_async_runtimes::tokio::get_runtime().spawn(async move {
        let payload = tokio::select! {
            payload = work => payload,
            _ = rx => {
                release(held);
                return;
            }
        };
        let mut pending = Some((held, payload));
        from_foreign_thread(|py| {
            let ((event_loop, future), payload) = pending.take().expect("taken once");
            let deliver = Deliver {
                payload: Mutex::new(Some(payload)),
            };
            // If the loop is closed, the Deliver is dropped here and gives the payload back.
            let _ = event_loop.call_method1(py, "call_soon_threadsafe", (deliver, future));
        });
        if let Some((held, payload)) = pending {
            payload.abandon();
            std::mem::forget(held);
        }
    });
    Ok(future)
}
