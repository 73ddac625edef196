//! The usage ledger: one append-only event per billable action.

pub mod buckets;
pub mod budget_table;
pub mod chain;
pub mod chain_source;
pub mod chain_verify;
pub mod cursor;
pub mod event;
pub mod event_json;
pub mod export;
pub mod filters;
pub mod page_end;
pub mod postgres;
pub mod presence_read;
pub mod redact;
pub mod rollup_plan;
pub mod sqlite;
pub mod store;
