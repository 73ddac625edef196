//! Bindings for the usage ledger.

mod audit;
mod budgets;
mod event;
mod filters;
pub(crate) mod jobs;
mod postgres;
pub(crate) mod pytime;
mod results;
mod sink;
pub(crate) mod store;

pub(crate) use audit::{PyCheckpoint, PyReceipt, PyVerifyProblem, PyVerifyReport};
pub(crate) use budgets::PyBudgetRecord;
pub(crate) use event::{_events_from_json, PyUsageEvent};
pub(crate) use postgres::{PyAsyncPostgresStore, PyPostgresStore};
pub(crate) use results::{PyAggregate, PyStoreStats};
pub(crate) use store::{_close_all_stores, metering_store, PyAsyncSQLiteStore, PySQLiteStore};

/// `None` or the quoted string, for reprs.
pub(crate) fn opt_repr(value: Option<&str>) -> String {
    value.map_or_else(|| "None".to_string(), |v| format!("{v:?}"))
}
