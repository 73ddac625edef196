//! `usagewarden.PostgresStore` and `usagewarden.AsyncPostgresStore`: the
//! PostgreSQL ledger through the same `StoreCore` and `store_class!` as SQLite.

use super::jobs::{job, Job};
use super::store::{python_log, store_class, CommonOptions, StoreCore};
use crate::error::{CoreError, CoreResult};
use crate::ledger::postgres::{PostgresOptions, PostgresStore};
use crate::ledger::store::NamespaceGrants;
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
    common: CommonOptions,
    row_security: bool,
) -> PyResult<StoreCore> {
    let dsn = args::text(dsn, "dsn")?;
    let schema = match schema {
        Some(s) if !s.is_none() => args::text(s, "schema")?,
        _ => "usagewarden".to_string(),
    };
    let options = PostgresOptions {
        dsn,
        schema: schema.clone(),
        retention_us: common.retention_us,
        durability: common.durability,
        clock: common.clock.clock.clone(),
        log: python_log(),
        pricing: common.core_pricing(),
        runtime: pyo3_async_runtimes::tokio::get_runtime().handle().clone(),
        row_security,
    };
    let store = Arc::new(py.detach(|| PostgresStore::open(options)).py_err(py)?);
    let describe = if row_security {
        format!("schema={schema:?}, row_security=True")
    } else {
        format!("schema={schema:?}")
    };
    Ok(common.into_core(store, describe))
}

/// The grants of a store whose backend keeps them (`NamespaceGrants`).
fn grants_job<T: Send + 'static>(
    core: &StoreCore,
    f: impl FnOnce(&dyn NamespaceGrants) -> CoreResult<T> + Send + 'static,
) -> Job<T> {
    let store = core.store.clone();
    job(move || match store.namespace_grants() {
        Some(grants) => f(grants),
        None => Err(CoreError::Store(
            "this store keeps no namespace grants".into(),
        )),
    })
}

fn role_and_namespace(
    role: &Bound<'_, PyAny>,
    namespace: &Bound<'_, PyAny>,
) -> PyResult<(String, String)> {
    Ok((
        args::text(role, "role")?,
        args::text(namespace, "namespace")?,
    ))
}

/// Both PostgreSQL classes: the constructor, the `dsn` getter and the
/// namespace grants; `$run` runs a job (sync, or as a coroutine).
macro_rules! postgres_store_class {
    (run = $run:path, $($head:tt)*) => {
        store_class!($($head)* {
            #[new]
            #[pyo3(signature = (dsn, *, schema=None, retention_seconds=None, durability=None, pricing=None, clock=None, row_security=false),
                   text_signature = "(dsn, *, schema='usagewarden', retention_seconds=None, durability='batch', pricing=None, clock=None, row_security=False)")]
            #[allow(clippy::too_many_arguments)] // the keyword arguments of the Python constructor
            fn new(
                py: Python<'_>,
                dsn: &Bound<'_, PyAny>,
                schema: Option<&Bound<'_, PyAny>>,
                retention_seconds: Option<&Bound<'_, PyAny>>,
                durability: Option<&Bound<'_, PyAny>>,
                pricing: Option<&Bound<'_, PyAny>>,
                clock: Option<&Bound<'_, PyAny>>,
                row_security: bool,
            ) -> PyResult<Self> {
                let common = CommonOptions::extract(py, retention_seconds, durability, clock, pricing)?;
                Ok(Self { core: open_postgres(py, dsn, schema, common, row_security)? })
            }

            /// The server and database, without the password.
            #[getter]
            fn dsn(&self) -> String {
                self.core.location()
            }

            /// Lets the database role `role` read `namespace`, enforced by
            /// PostgreSQL's row-level security on every connection of that
            /// role (turned on for the schema by the first grant). Run by the
            /// schema's owner.
            fn grant_namespace<'py>(&self, py: Python<'py>, role: &Bound<'py, PyAny>, namespace: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                let (role, namespace) = role_and_namespace(role, namespace)?;
                $run(py, grants_job(&self.core, move |g| g.grant_namespace(&role, &namespace)))
            }

            /// Takes `namespace` back from `role`; `False` when it was not granted.
            fn revoke_namespace<'py>(&self, py: Python<'py>, role: &Bound<'py, PyAny>, namespace: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
                let (role, namespace) = role_and_namespace(role, namespace)?;
                $run(py, grants_job(&self.core, move |g| g.revoke_namespace(&role, &namespace)))
            }

            /// Every `(role, namespace)` granted, in order.
            fn namespace_grants<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                $run(py, grants_job(&self.core, |g| g.granted()))
            }
        });
    };
}

postgres_store_class!(
    run = crate::python::ledger::store::sync_result,
    sync PyPostgresStore,
    "PostgresStore",
    "The usage ledger in PostgreSQL, shared by every host that opens it. One writer task batches events into transactions (binary COPY); reads use a small connection pool.",
);
postgres_store_class!(
    run = crate::python::ledger::jobs::run_async,
    async PyAsyncPostgresStore,
    "AsyncPostgresStore",
    blocking = PyPostgresStore,
    "The PostgreSQL ledger for asyncio: the same methods as PostgresStore, as coroutines that never block the event loop.",
);
