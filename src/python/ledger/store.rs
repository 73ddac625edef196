//! The store classes: one `StoreCore` over any `MeteringStore`, and the
//! `store_class!` macro that makes a sync and an async class of each backend
//! (`SQLiteStore`/`AsyncSQLiteStore` here).

use super::audit::{checkpoints_arg, PyCheckpoint, PyReceipt, PyVerifyReport};
use super::event::{extract_event, PyUsageEvent};
use super::filters;
use super::jobs::{job, run_async, run_sync, Job};
use super::results::{PyAggregate, PyStoreStats};
use super::sink::{AtomicFile, Destination};
use crate::error::CoreError;
use crate::ledger::chain_verify::PositionRange;
use crate::ledger::event::DEFAULT_NAMESPACE;
use crate::ledger::export::Format;
use crate::ledger::sqlite::{
    Durability, LogLevel, LogSink, SqliteStore, StoreOptions, CLOSE_GRACE,
};
use crate::ledger::store::MeteringStore;
use crate::python::args;
use crate::python::asyncio::completed;
use crate::python::clock::ClockArg;
use crate::python::errors::IntoPyResult;
use crate::python::pricing::PyPricing;
use parking_lot::Mutex;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::IntoPyObjectExt;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// `timeout=` in seconds, > 0, or `None`.
pub(crate) fn timeout_arg(timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    Ok(args::optional_seconds(timeout, "timeout", true)?.map(Duration::from_nanos))
}

/// `namespace=`: a str, or `None` for the default namespace.
pub(crate) fn namespace_arg(namespace: Option<&Bound<'_, PyAny>>) -> PyResult<String> {
    Ok(args::optional_text(namespace, "namespace")?.unwrap_or_else(|| DEFAULT_NAMESPACE.into()))
}

/// Every open store, so that interpreter exit can flush and close them.
static OPEN_STORES: Mutex<Vec<Weak<dyn MeteringStore>>> = Mutex::new(Vec::new());

/// Commits what every open store has queued and closes them (run at exit).
#[pyfunction]
pub(crate) fn _close_all_stores(py: Python<'_>) {
    let stores: Vec<Arc<dyn MeteringStore>> = {
        let mut open = OPEN_STORES.lock();
        open.retain(|s| s.strong_count() > 0);
        open.iter().filter_map(Weak::upgrade).collect()
    };
    py.detach(|| {
        stores.iter().for_each(|s| {
            let _ = s.close(CLOSE_GRACE);
        })
    });
}

fn log_to_python(level: LogLevel, message: &str) {
    // At interpreter shutdown there is nowhere to log to.
    let _ = crate::python::bridge::from_foreign_thread(|py| -> PyResult<()> {
        let logger = py
            .import("logging")?
            .call_method1("getLogger", ("usagewarden",))?;
        let method = match level {
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        };
        logger.call_method1(method, (message,))?;
        Ok(())
    });
}

/// Where the writers report failures: Python's `usagewarden` logger.
pub(crate) fn python_log() -> LogSink {
    Arc::new(log_to_python)
}

/// The shared core of every store class.
pub(crate) struct StoreCore {
    pub(crate) store: Arc<dyn MeteringStore>,
    pub(crate) clock: ClockArg,
    pub(crate) pricing: Option<Py<PyPricing>>,
    /// What the repr shows after the class name, e.g. `path="usage.db"`.
    pub(crate) describe: String,
}

impl Drop for StoreCore {
    /// The last Python handle of a store closes it with the interpreter
    /// released: closing waits for the writer, which may need the
    /// interpreter to log (a garbage-collected store would deadlock).
    fn drop(&mut self) {
        if Arc::strong_count(&self.store) == 1 && !self.store.is_closed() {
            let store = &self.store;
            Python::attach(|py| {
                py.detach(|| {
                    let _ = store.close(CLOSE_GRACE);
                })
            });
        }
    }
}

fn optional_pricing<'py>(
    pricing: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<Bound<'py, PyPricing>>> {
    match pricing {
        Some(p) if !p.is_none() => p
            .cast::<PyPricing>()
            .map(|p| Some(p.clone()))
            .map_err(|_| PyTypeError::new_err("pricing must be a usagewarden.Pricing or None")),
        _ => Ok(None),
    }
}

/// The options every backend takes, checked once.
pub(crate) struct CommonOptions<'py> {
    pub(crate) retention_us: Option<i64>,
    pub(crate) durability: Durability,
    pub(crate) clock: ClockArg,
    pub(crate) pricing: Option<Bound<'py, PyPricing>>,
}

impl<'py> CommonOptions<'py> {
    pub(crate) fn extract(
        py: Python<'py>,
        retention_seconds: Option<&Bound<'py, PyAny>>,
        durability: Option<&Bound<'py, PyAny>>,
        clock: Option<&Bound<'py, PyAny>>,
        pricing: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<CommonOptions<'py>> {
        let pricing = optional_pricing(pricing)?;
        let retention_us = args::optional_seconds(retention_seconds, "retention_seconds", true)?
            .map(|ns| (ns / 1_000) as i64);
        let durability = match durability {
            Some(d) if !d.is_none() => {
                Durability::parse(&args::text(d, "durability")?).py_err(py)?
            }
            _ => Durability::Batch,
        };
        Ok(CommonOptions {
            retention_us,
            durability,
            clock: ClockArg::extract(clock)?,
            pricing,
        })
    }

    /// The pricing for the Rust store.
    pub(crate) fn core_pricing(&self) -> Option<Arc<crate::pricing::Pricing>> {
        self.pricing.as_ref().map(|p| p.get().inner.clone())
    }

    /// Wraps an opened store; it is closed at interpreter exit.
    pub(crate) fn into_core(self, store: Arc<dyn MeteringStore>, describe: String) -> StoreCore {
        OPEN_STORES.lock().push(Arc::downgrade(&store));
        StoreCore {
            store,
            clock: self.clock,
            pricing: self.pricing.map(Bound::unbind),
            describe,
        }
    }
}

impl StoreCore {
    pub(crate) fn open_sqlite(
        py: Python<'_>,
        path: Option<&Bound<'_, PyAny>>,
        retention_seconds: Option<&Bound<'_, PyAny>>,
        durability: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
        pricing: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<StoreCore> {
        let common = CommonOptions::extract(py, retention_seconds, durability, clock, pricing)?;
        let path: PathBuf = match path {
            Some(p) if !p.is_none() => py
                .import("os")?
                .call_method1("fspath", (p,))
                .and_then(|p| p.extract())
                .map_err(|_| PyTypeError::new_err("path must be a str or os.PathLike"))?,
            _ => PathBuf::from("usagewarden.db"),
        };
        let options = StoreOptions {
            path,
            retention_us: common.retention_us,
            durability: common.durability,
            clock: common.clock.clock.clone(),
            log: python_log(),
            pricing: common.core_pricing(),
        };
        let store = Arc::new(py.detach(|| SqliteStore::open(options)).py_err(py)?);
        let describe = format!("path={:?}", store.location());
        Ok(common.into_core(store, describe))
    }

    /// A second view of the same store (the async class's `blocking()`).
    pub(crate) fn share(&self, py: Python<'_>) -> StoreCore {
        StoreCore {
            store: self.store.clone(),
            clock: self.clock.clone_ref(py),
            pricing: self.pricing.as_ref().map(|p| p.clone_ref(py)),
            describe: self.describe.clone(),
        }
    }

    /// The sync fast path: with room in the queue, queue the event without
    /// releasing the interpreter (a few hundred nanoseconds of work).
    pub(crate) fn try_record_now(
        &self,
        event: &Bound<'_, PyAny>,
    ) -> PyResult<Result<String, Job<String>>> {
        let shared = extract_event(event, "event")?;
        if self.store.durability() != Durability::Batch {
            let store = self.store.clone();
            return Ok(Err(job(move || store.record_valid(shared))));
        }
        let request_id = shared.request_id.clone();
        match self.store.try_record_valid(shared) {
            Ok(None) => Ok(Ok(request_id)),
            Ok(Some(back)) => {
                let store = self.store.clone();
                Ok(Err(job(move || store.record_valid(back))))
            }
            // Raised where the result is taken (at `await` for the async store).
            Err(e) => Ok(Err(job(move || Err(e)))),
        }
    }

    /// Queues the event if the queue has room now, never waiting.
    pub(crate) fn record_nowait(&self, py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<bool> {
        let shared = extract_event(event, "event")?;
        Ok(self.store.try_record_valid(shared).py_err(py)?.is_none())
    }

    pub(crate) fn record_batch(
        &self,
        events: &Bound<'_, PyAny>,
        timeout: Option<Duration>,
    ) -> PyResult<Job<usize>> {
        let mut batch = Vec::new();
        for (i, item) in events
            .try_iter()
            .map_err(|_| PyTypeError::new_err("events must be an iterable of UsageEvent"))?
            .enumerate()
        {
            let item = item?;
            match item.cast::<PyUsageEvent>() {
                Ok(event) => batch.push(event.get().inner.clone()),
                // The error names the position; formatted only when needed.
                Err(_) => extract_event(&item, &format!("events[{i}]")).map(|_| ())?,
            }
        }
        let store = self.store.clone();
        Ok(job(move || store.record_batch_valid(batch, timeout)))
    }

    pub(crate) fn query(
        &self,
        limit: Option<&Bound<'_, PyAny>>,
        offset: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Job<Vec<PyUsageEvent>>> {
        let filters = filters::from_kwargs(kwargs)?;
        let limit = args::optional_count(limit, "limit")?;
        let offset = args::count(offset, "offset", 0)?;
        let store = self.store.clone();
        Ok(job(move || {
            Ok(store
                .query(&filters, limit, offset)?
                .into_iter()
                .map(PyUsageEvent::wrap)
                .collect())
        }))
    }

    pub(crate) fn page(
        &self,
        limit: Option<&Bound<'_, PyAny>>,
        offset: Option<&Bound<'_, PyAny>>,
        cursor: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Job<(Vec<PyUsageEvent>, Option<String>)>> {
        let filters = filters::from_kwargs(kwargs)?;
        let limit = args::count(limit, "limit", 100)?;
        let offset = args::count(offset, "offset", 0)?;
        let cursor = args::optional_text(cursor, "cursor")?;
        let store = self.store.clone();
        Ok(job(move || {
            let (events, next) = store.page(&filters, limit, offset, cursor.as_deref())?;
            Ok((events.into_iter().map(PyUsageEvent::wrap).collect(), next))
        }))
    }

    pub(crate) fn reprice(
        &self,
        pricing: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Job<usize>> {
        let pricing = pricing
            .cast::<PyPricing>()
            .map_err(|_| PyTypeError::new_err("pricing must be a usagewarden.Pricing"))?
            .get()
            .inner
            .clone();
        let filters = filters::from_kwargs(kwargs)?;
        let store = self.store.clone();
        Ok(job(move || store.reprice(pricing, &filters)))
    }

    pub(crate) fn aggregate(
        &self,
        group_by: &Bound<'_, PyAny>,
        tz: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Job<Vec<PyAggregate>>> {
        let group_by = args::text(group_by, "group_by")?;
        let tz = match tz {
            Some(t) if !t.is_none() => args::text(t, "tz")?,
            _ => "UTC".to_string(),
        };
        let filters = filters::from_kwargs(kwargs)?;
        let store = self.store.clone();
        Ok(job(move || {
            Ok(store
                .aggregate(&group_by, &tz, &filters)?
                .into_iter()
                .map(|inner| PyAggregate { inner })
                .collect())
        }))
    }

    pub(crate) fn summary(&self, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Job<PyAggregate>> {
        let filters = filters::from_kwargs(kwargs)?;
        let store = self.store.clone();
        Ok(job(move || {
            Ok(PyAggregate {
                inner: store.summary(&filters)?,
            })
        }))
    }

    pub(crate) fn distinct(
        &self,
        column: &'static str,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Job<Vec<(String, u64)>>> {
        let filters = filters::from_kwargs(kwargs)?;
        let store = self.store.clone();
        Ok(job(move || store.distinct(column, &filters)))
    }

    pub(crate) fn stats(&self) -> Job<PyStoreStats> {
        let store = self.store.clone();
        job(move || {
            Ok(PyStoreStats {
                inner: store.stats()?,
            })
        })
    }

    pub(crate) fn purge_expired(&self, timeout: Option<Duration>) -> Job<usize> {
        let store = self.store.clone();
        job(move || store.purge_expired(timeout))
    }

    pub(crate) fn flush(&self, timeout: Option<Duration>) -> Job<()> {
        let store = self.store.clone();
        job(move || store.flush(timeout))
    }

    pub(crate) fn close(&self, timeout: Option<Duration>) -> Job<()> {
        let store = self.store.clone();
        job(move || store.close(timeout.unwrap_or(CLOSE_GRACE)))
    }

    pub(crate) fn export(
        &self,
        dest: &Bound<'_, PyAny>,
        format: Option<&Bound<'_, PyAny>>,
        limit: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Job<u64>> {
        let py = dest.py();
        let format = match format {
            Some(f) if !f.is_none() => Format::parse(&args::text(f, "format")?).py_err(py)?,
            _ => Format::Csv,
        };
        let limit = args::optional_count(limit, "limit")?;
        let filters = filters::from_kwargs(kwargs)?;
        let destination = Destination::extract(dest)?;
        let store = self.store.clone();
        Ok(job(move || {
            let io = |e: std::io::Error| CoreError::Store(format!("export: {e}"));
            match destination {
                Destination::Path(path) => {
                    let mut file = AtomicFile::create(path).map_err(io)?;
                    let rows = store.export(&filters, format, limit, file.writer())?;
                    file.commit().map_err(io)?;
                    Ok(rows)
                }
                Destination::File(writer) => {
                    let mut out = BufWriter::with_capacity(1 << 16, writer);
                    let rows = store.export(&filters, format, limit, &mut out)?;
                    out.flush().map_err(io)?;
                    Ok(rows)
                }
            }
        }))
    }

    pub(crate) fn verify(
        &self,
        namespace: Option<&Bound<'_, PyAny>>,
        start: Option<&Bound<'_, PyAny>>,
        end: Option<&Bound<'_, PyAny>>,
        checkpoints: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Job<PyVerifyReport>> {
        let namespace = args::optional_text(namespace, "namespace")?;
        let position = |v: Option<u64>| v.map(|p| p.min(i64::MAX as u64) as i64);
        let range = PositionRange {
            start: position(args::optional_count(start, "start")?),
            end: position(args::optional_count(end, "end")?),
        };
        let anchors = checkpoints_arg(checkpoints)?;
        let store = self.store.clone();
        Ok(job(move || {
            Ok(PyVerifyReport {
                inner: store.verify(namespace.as_deref(), range, &anchors)?,
            })
        }))
    }

    pub(crate) fn receipt(
        &self,
        request_id: &Bound<'_, PyAny>,
        namespace: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Job<PyReceipt>> {
        let request_id = args::text(request_id, "request_id")?;
        let namespace = namespace_arg(namespace)?;
        let store = self.store.clone();
        Ok(job(move || {
            Ok(PyReceipt {
                inner: store.receipt(&request_id, &namespace)?,
            })
        }))
    }

    pub(crate) fn checkpoint(
        &self,
        namespace: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Job<PyCheckpoint>> {
        let namespace = namespace_arg(namespace)?;
        let store = self.store.clone();
        Ok(job(move || {
            Ok(PyCheckpoint {
                inner: store.checkpoint(&namespace)?,
            })
        }))
    }

    pub(crate) fn location(&self) -> String {
        self.store.location()
    }

    pub(crate) fn durability(&self) -> &'static str {
        match self.store.durability() {
            Durability::Batch => "batch",
            Durability::Commit => "commit",
        }
    }

    pub(crate) fn retention_seconds(&self) -> Option<f64> {
        self.store.retention_us().map(|us| us as f64 / 1e6)
    }
}

/// Generates a backend's store classes from one list of methods: the sync
/// class runs each job on the calling thread (interpreter released), the
/// async class returns an awaitable that runs it on the tokio blocking pool
/// (or one already complete when the work is only in memory). Each backend
/// gives its constructor and getters in the trailing block.
macro_rules! store_class {
    (sync $name:ident, $pyname:literal, $doc:literal, { $($extra:tt)* }) => {
        $crate::python::ledger::store::store_class!(@class $name, $pyname,
            $crate::python::ledger::store::sync_result,
            $crate::python::ledger::store::record_sync, $doc, {
            fn __enter__(slf: Py<Self>) -> Py<Self> {
                slf
            }

            #[pyo3(signature = (*_args))]
            fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
                let store = self.core.store.clone();
                let _ = py.detach(|| store.close($crate::ledger::sqlite::CLOSE_GRACE));
                false
            }

            $($extra)*
        });
    };
    (async $name:ident, $pyname:literal, blocking = $sync:ident, $doc:literal, { $($extra:tt)* }) => {
        $crate::python::ledger::store::store_class!(@class $name, $pyname,
            $crate::python::ledger::jobs::run_async,
            $crate::python::ledger::store::record_async, $doc, {
            fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
                $crate::python::asyncio::completed(slf.py(), slf)
            }

            #[pyo3(signature = (*_args))]
            fn __aexit__<'py>(&self, py: Python<'py>, _args: &Bound<'py, pyo3::types::PyTuple>) -> PyResult<Bound<'py, PyAny>> {
                let store = self.core.store.clone();
                $crate::python::ledger::jobs::run_async(py, $crate::python::ledger::jobs::job(move || {
                    let _ = store.close($crate::ledger::sqlite::CLOSE_GRACE);
                    Ok(false)
                }))
            }

            /// The same ledger for threads and sync code (one writer;
            /// closing either closes both).
            fn blocking(&self, py: Python<'_>) -> $sync {
                $sync { core: self.core.share(py) }
            }

            $($extra)*
        });
    };
    (@class $name:ident, $pyname:literal, $run:path, $record:path, $doc:literal, { $($extra:tt)* }) => {
        #[doc = $doc]
        #[pyclass(frozen, name = $pyname, module = "usagewarden")]
        pub struct $name {
            pub(crate) core: StoreCore,
        }

        #[pymethods]
        impl $name {
            /// The prices that fill in the cost of events recorded without one.
            #[getter]
            fn pricing(&self, py: Python<'_>) -> Option<Py<PyPricing>> {
                self.core.pricing.as_ref().map(|p| p.clone_ref(py))
            }

            /// Recomputes stored costs with `pricing` (for events recorded without a
            /// cost, or priced by a store); a cost the caller gave is kept. Returns
            /// how many events changed.
            #[pyo3(signature = (pricing, **filters))]
            fn reprice<'py>(
                &self,
                py: Python<'py>,
                pricing: &Bound<'py, PyAny>,
                filters: Option<&Bound<'py, PyDict>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.reprice(pricing, filters)?)
            }

            #[getter]
            fn durability(&self) -> &'static str {
                self.core.durability()
            }
            #[getter]
            fn retention_seconds(&self) -> Option<f64> {
                self.core.retention_seconds()
            }
            #[getter]
            fn clock(&self, py: Python<'_>) -> Py<PyAny> {
                self.core.clock.to_object(py)
            }
            #[getter]
            fn closed(&self) -> bool {
                self.core.store.is_closed()
            }

            /// Records one event; returns its request id.
            fn record<'py>(&self, py: Python<'py>, event: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                $record(py, &self.core, event)
            }

            /// Queues one event without waiting, whatever the durability: True
            /// when queued (the writer commits it), False when the queue is
            /// full (nothing queued). For callers that must never block, such
            /// as request metering; a plain call on both store classes.
            fn record_nowait(&self, py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<bool> {
                self.core.record_nowait(py, event)
            }

            /// Records every event in one transaction, or none; returns how many were new.
            /// With `timeout` (seconds), a failing database raises `StoreError`
            /// when it passes, and nothing of the batch is written.
            #[pyo3(signature = (events, *, timeout=None))]
            fn record_batch<'py>(&self, py: Python<'py>, events: &Bound<'py, PyAny>, timeout: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.record_batch(events, $crate::python::ledger::store::timeout_arg(timeout)?)?)
            }

            /// Events matching the filters, oldest first (then in insertion order).
            #[pyo3(signature = (*, limit=None, offset=None, **filters))]
            fn query<'py>(
                &self,
                py: Python<'py>,
                limit: Option<&Bound<'py, PyAny>>,
                offset: Option<&Bound<'py, PyAny>>,
                filters: Option<&Bound<'py, PyDict>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.query(limit, offset, filters)?)
            }

            /// One page of events in ledger order and the cursor of the next page
            /// (`None` after the last). Pass that cursor, with the same filters,
            /// for the next page: events recorded meanwhile are neither skipped
            /// nor repeated, however deep the page.
            #[pyo3(signature = (*, limit=None, offset=None, cursor=None, **filters), text_signature = "(self, *, limit=100, offset=0, cursor=None, **filters)")]
            fn page<'py>(
                &self,
                py: Python<'py>,
                limit: Option<&Bound<'py, PyAny>>,
                offset: Option<&Bound<'py, PyAny>>,
                cursor: Option<&Bound<'py, PyAny>>,
                filters: Option<&Bound<'py, PyDict>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.page(limit, offset, cursor, filters)?)
            }

            /// Totals per agent, consumer, model, action, namespace, or per hour,
            /// day, ISO week or month in the IANA time zone `tz`.
            #[pyo3(signature = (group_by, *, tz=None, **filters), text_signature = "(self, group_by, *, tz='UTC', **filters)")]
            fn aggregate<'py>(
                &self,
                py: Python<'py>,
                group_by: &Bound<'py, PyAny>,
                tz: Option<&Bound<'py, PyAny>>,
                filters: Option<&Bound<'py, PyDict>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.aggregate(group_by, tz, filters)?)
            }

            /// Totals over every matching event (group `"all"`).
            #[pyo3(signature = (**filters))]
            fn summary<'py>(&self, py: Python<'py>, filters: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.summary(filters)?)
            }

            /// `(agent_id, events)` for every agent matching the filters.
            #[pyo3(signature = (**filters))]
            fn agents<'py>(&self, py: Python<'py>, filters: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.distinct("agent_id", filters)?)
            }

            /// `(consumer_id, events)` for every consumer matching the filters.
            #[pyo3(signature = (**filters))]
            fn consumers<'py>(&self, py: Python<'py>, filters: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.distinct("consumer_id", filters)?)
            }

            fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.stats())
            }

            /// Deletes events older than now − retention; returns how many.
            #[pyo3(signature = (*, timeout=None))]
            fn purge_expired<'py>(&self, py: Python<'py>, timeout: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.purge_expired($crate::python::ledger::store::timeout_arg(timeout)?))
            }

            /// Streams matching events to a path or file object; returns the rows written.
            #[pyo3(signature = (dest, *, format=None, limit=None, **filters),
                   text_signature = "(self, dest, *, format='csv', limit=None, **filters)")]
            fn export<'py>(
                &self,
                py: Python<'py>,
                dest: &Bound<'py, PyAny>,
                format: Option<&Bound<'py, PyAny>>,
                limit: Option<&Bound<'py, PyAny>>,
                filters: Option<&Bound<'py, PyDict>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.export(dest, format, limit, filters)?)
            }

            /// Returns once every event queued before the call is committed.
            /// With `timeout` (seconds), raises `StoreError` when it passes
            /// (the events stay queued); a store that stopped accepting writes
            /// raises at once.
            #[pyo3(signature = (*, timeout=None))]
            fn flush<'py>(&self, py: Python<'py>, timeout: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.flush($crate::python::ledger::store::timeout_arg(timeout)?))
            }

            /// Commits what is queued and closes the store, within `timeout`
            /// seconds (default 10): what a failing database has not taken by
            /// then goes to the spill file, recorded on the next open. Raises
            /// `StoreError` only if acknowledged events could not be kept.
            /// Idempotent.
            #[pyo3(signature = (*, timeout=None))]
            fn close<'py>(&self, py: Python<'py>, timeout: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.close($crate::python::ledger::store::timeout_arg(timeout)?))
            }

            /// Recomputes the hash chain of `namespace` (every namespace when
            /// `None`) between chain positions `start` and `end` (inclusive),
            /// checking the anchored `checkpoints` (Checkpoint objects or their
            /// dicts) on the way. The report names the first altered, missing,
            /// inserted or reordered row.
            #[pyo3(signature = (namespace=None, *, start=None, end=None, checkpoints=None))]
            fn verify<'py>(
                &self,
                py: Python<'py>,
                namespace: Option<&Bound<'py, PyAny>>,
                start: Option<&Bound<'py, PyAny>>,
                end: Option<&Bound<'py, PyAny>>,
                checkpoints: Option<&Bound<'py, PyAny>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.verify(namespace, start, end, checkpoints)?)
            }

            /// The chain receipt of a committed event: its canonical payload,
            /// position and the digests before and after it.
            #[pyo3(signature = (request_id, *, namespace=None), text_signature = "(self, request_id, *, namespace='default')")]
            fn receipt<'py>(
                &self,
                py: Python<'py>,
                request_id: &Bound<'py, PyAny>,
                namespace: Option<&Bound<'py, PyAny>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.receipt(request_id, namespace)?)
            }

            /// The head of `namespace`'s chain over the committed events, to anchor elsewhere.
            #[pyo3(signature = (namespace=None), text_signature = "(self, namespace='default')")]
            fn checkpoint<'py>(&self, py: Python<'py>, namespace: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.checkpoint(namespace)?)
            }

            /// Stores `budget` in `namespace`; `ConflictError` when a live budget
            /// there has its name (a deleted one is replaced). Running
            /// `BudgetEngine`s on this ledger pick it up on their refresh.
            #[pyo3(signature = (budget, *, namespace=None), text_signature = "(self, budget, *, namespace='default')")]
            fn create_budget<'py>(&self, py: Python<'py>, budget: &Bound<'py, PyAny>, namespace: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.put_budget(budget, namespace, true)?)
            }

            /// Replaces the definition of the live budget named `budget.name`.
            #[pyo3(signature = (budget, *, namespace=None), text_signature = "(self, budget, *, namespace='default')")]
            fn update_budget<'py>(&self, py: Python<'py>, budget: &Bound<'py, PyAny>, namespace: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.put_budget(budget, namespace, false)?)
            }

            /// Soft-deletes a live budget (its row stays, marked deleted).
            #[pyo3(signature = (name, *, namespace=None), text_signature = "(self, name, *, namespace='default')")]
            fn delete_budget<'py>(&self, py: Python<'py>, name: &Bound<'py, PyAny>, namespace: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.mark_budget(name, namespace, true)?)
            }

            /// Resets a live budget's spend: it counts from now on.
            #[pyo3(signature = (name, *, namespace=None), text_signature = "(self, name, *, namespace='default')")]
            fn reset_budget<'py>(&self, py: Python<'py>, name: &Bound<'py, PyAny>, namespace: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.mark_budget(name, namespace, false)?)
            }

            /// The live budget `name`; `ValueError` when there is none.
            #[pyo3(signature = (name, *, namespace=None), text_signature = "(self, name, *, namespace='default')")]
            fn get_budget<'py>(&self, py: Python<'py>, name: &Bound<'py, PyAny>, namespace: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.get_budget(name, namespace)?)
            }

            /// The stored budgets of `namespace` (every namespace when `None`),
            /// by namespace and name; deleted ones too with `include_deleted`.
            #[pyo3(signature = (namespace=None, *, include_deleted=false))]
            fn budgets<'py>(&self, py: Python<'py>, namespace: Option<&Bound<'py, PyAny>>, include_deleted: bool) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.list_budgets(namespace, include_deleted)?)
            }

            /// The spend of stored budgets over their current period, read from
            /// the ledger (in-flight reservations are an engine's): one dict per
            /// budget and scope value, for `name` or every live budget of `namespace`.
            #[pyo3(signature = (name=None, *, namespace=None), text_signature = "(self, name=None, *, namespace='default')")]
            fn budget_status<'py>(&self, py: Python<'py>, name: Option<&Bound<'py, PyAny>>, namespace: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.budget_status(name, namespace)?)
            }

            /// `(day, spend_usd)` of a stored budget over the last `days` days
            /// (1 to 365), in the budget's time zone; days without spend are left out.
            #[pyo3(signature = (name, *, days=None, namespace=None), text_signature = "(self, name, *, days=30, namespace='default')")]
            fn budget_history<'py>(&self, py: Python<'py>, name: &Bound<'py, PyAny>, days: Option<&Bound<'py, PyAny>>, namespace: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, self.core.budget_history(name, days, namespace)?)
            }

            fn __repr__(&self) -> String {
                format!("{}({}, durability={:?})", $pyname, self.core.describe, self.core.durability())
            }

            $($extra)*
        }
    };
}

pub(crate) use store_class;

pub(crate) fn sync_result<'py, T: IntoPyObject<'py> + Send>(
    py: Python<'py>,
    job: Job<T>,
) -> PyResult<Bound<'py, PyAny>> {
    run_sync(py, job)?.into_bound_py_any(py)
}

pub(crate) fn record_sync<'py>(
    py: Python<'py>,
    core: &StoreCore,
    event: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    match core.try_record_now(event)? {
        Ok(request_id) => request_id.into_bound_py_any(py),
        Err(wait) => sync_result(py, wait),
    }
}

/// Queued at once when there is room (no thread hop, no loop round trip);
/// a full queue or `durability="commit"` parks on a future.
pub(crate) fn record_async<'py>(
    py: Python<'py>,
    core: &StoreCore,
    event: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    match core.try_record_now(event)? {
        Ok(request_id) => completed(py, request_id),
        Err(wait) => run_async(py, wait),
    }
}

/// Both SQLite classes: the constructor and the `path` getter.
macro_rules! sqlite_store_class {
    ($($head:tt)*) => {
        store_class!($($head)* {
            #[new]
            #[pyo3(signature = (path=None, *, retention_seconds=None, durability=None, clock=None, pricing=None),
                   text_signature = "(path='usagewarden.db', *, retention_seconds=None, durability='batch', clock=None, pricing=None)")]
            fn new(
                py: Python<'_>,
                path: Option<&Bound<'_, PyAny>>,
                retention_seconds: Option<&Bound<'_, PyAny>>,
                durability: Option<&Bound<'_, PyAny>>,
                clock: Option<&Bound<'_, PyAny>>,
                pricing: Option<&Bound<'_, PyAny>>,
            ) -> PyResult<Self> {
                Ok(Self { core: StoreCore::open_sqlite(py, path, retention_seconds, durability, clock, pricing)? })
            }

            #[getter]
            fn path(&self) -> String {
                self.core.location()
            }
        });
    };
}

sqlite_store_class!(
    sync PySQLiteStore,
    "SQLiteStore",
    "The usage ledger in an embedded SQLite file. One background writer batches events into transactions; reads use their own connections.",
);
sqlite_store_class!(
    async PyAsyncSQLiteStore,
    "AsyncSQLiteStore",
    blocking = PySQLiteStore,
    "The SQLite ledger for asyncio: the same methods as SQLiteStore, as coroutines that never block the event loop.",
);

/// The Rust store behind any store object, sync or async, of any backend.
pub(crate) fn metering_store(store: &Bound<'_, PyAny>) -> Option<Arc<dyn MeteringStore>> {
    macro_rules! first_of {
        ($($class:ty),*) => {
            $(if let Ok(s) = store.cast::<$class>() {
                return Some(s.get().core.store.clone());
            })*
        };
    }
    use super::postgres::{PyAsyncPostgresStore, PyPostgresStore};
    first_of!(
        PySQLiteStore,
        PyAsyncSQLiteStore,
        PyPostgresStore,
        PyAsyncPostgresStore
    );
    None
}
