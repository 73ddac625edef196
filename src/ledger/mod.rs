//! The usage ledger: one append-only event per billable action.

pub mod event;
pub mod redact;
