//! `usagewarden.PostgresStore` and `usagewarden.AsyncPostgresStore`: the
//! PostgreSQL ledger through the same `StoreCore` and `store_class!` as SQLite.

use super::store::{python_log, store_class, CommonOptions, StoreCore};
use crate::ledger::postgres::{PostgresOptions, PostgresStore};
use crate::python::args;
use crate::python::errors::IntoPyResult;
use crate::python::pricing::PyPricing;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Arc;

fn open_postgres(
    py: Python<'_>,
    dsn: &Bound<'_, PyAny>,
    schema: Option<&Bound<'_, PyAny>>,
    retention_seconds: Option<&Bound<'_, PyAny>>,
    durability: Option<&Bound<'_, PyAny>>,
    pricing: Option<&Bound<'_, PyAny>>,
    clock: Option<&Bound<'_, PyAny>>,
) -> PyResult<StoreCore> {
    let dsn = args::text(dsn, "dsn")?;
    let schema = match schema {
        Some(s) if !s.is_none() => args::text(s, "schema")?,
        _ => "usagewarden".to_string(),
    };
    let common = CommonOptions::extract(py, retention_seconds, durability, clock, pricing)?;
    let options = PostgresOptions {
        dsn,
        schema: schema.clone(),
        retention_us: common.retention_us,
        durability: common.durability,
        clock: common.clock.clock.clone(),
        log: python_log(),
        pricing: common.core_pricing(),
        runtime: pyo3_async_runtimes::tokio::get_runtime().handle().clone(),
    };
    let store = Arc::new(py.detach(|| PostgresStore::open(options)).py_err(py)?);
    let describe = format!("schema={schema:?}");
    Ok(common.into_core(store, describe))
}

/// Both PostgreSQL classes: the constructor and the `dsn`/`schema` getters.
macro_rules! postgres_store_class {
    ($($head:tt)*) => {
        store_class!($($head)* {
            #[new]
            #[pyo3(signature = (dsn, *, schema=None, retention_seconds=None, durability=None, pricing=None, clock=None),
                   text_signature = "(dsn, *, schema='usagewarden', retention_seconds=None, durability='batch', pricing=None, clock=None)")]
            fn new(
                py: Python<'_>,
                dsn: &Bound<'_, PyAny>,
                schema: Option<&Bound<'_, PyAny>>,
                retention_seconds: Option<&Bound<'_, PyAny>>,
                durability: Option<&Bound<'_, PyAny>>,
                pricing: Option<&Bound<'_, PyAny>>,
                clock: Option<&Bound<'_, PyAny>>,
            ) -> PyResult<Self> {
                Ok(Self { core: open_postgres(py, dsn, schema, retention_seconds, durability, pricing, clock)? })
            }

            /// The server and database, without the password.
            #[getter]
            fn dsn(&self) -> String {
                self.core.location()
            }
        });
    };
}

postgres_store_class!(
    sync PyPostgresStore,
    "PostgresStore",
    "The usage ledger in PostgreSQL, shared by every host that opens it. One writer task batches events into transactions (binary COPY); reads use a small connection pool.",
);
postgres_store_class!(
    async PyAsyncPostgresStore,
    "AsyncPostgresStore",
    blocking = PyPostgresStore,
    "The PostgreSQL ledger for asyncio: the same methods as PostgresStore, as coroutines that never block the event loop.",
);
