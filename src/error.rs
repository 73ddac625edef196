//! Errors of the pure-Rust core; the bindings map each to one Python exception.

use crate::limits::LimitSpec;
use std::fmt;

#[derive(Debug)]
pub enum CoreError {
    /// A bad argument: `(argument name, what is wrong)`.
    InvalidArgument(&'static str, String),
    /// A reservation was settled or cancelled after it was settled.
    AlreadySettled,
    /// The request did not fit before its deadline, or can never fit.
    RateLimited(RateLimited),
    /// A blocking wait was interrupted (for example by a signal handler).
    Interrupted,
    /// The same request id was recorded before with different content.
    Conflict(String),
    /// The ledger could not complete an operation.
    Store(String),
    /// A shared engine (Redis) could not be reached in time.
    Unavailable(String),
    /// An SQLite error (the writer retries these; reads report them).
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for CoreError {
    fn from(e: rusqlite::Error) -> Self {
        CoreError::Sqlite(e)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimited {
    /// Nanoseconds until the request would fit; `None` when it never can.
    pub retry_after_ns: Option<u64>,
    /// The limit that refused it.
    pub limit: Option<LimitSpec>,
    /// The key (or keys, joined by `, `) that was refused.
    pub key: String,
    pub message: String,
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::InvalidArgument(arg, msg) => write!(f, "{arg}: {msg}"),
            CoreError::AlreadySettled => write!(f, "reservation is already settled"),
            CoreError::RateLimited(r) => f.write_str(&r.message),
            CoreError::Interrupted => write!(f, "wait interrupted"),
            CoreError::Conflict(m) | CoreError::Store(m) | CoreError::Unavailable(m) => {
                f.write_str(m)
            }
            CoreError::Sqlite(e) => write!(f, "SQLite: {e}"),
        }
    }
}

impl std::error::Error for CoreError {}

pub type CoreResult<T> = Result<T, CoreError>;
