//! usagewarden: rate limits, usage metering and budgets for AI-agent code.
//!
//! The modules at this level are plain Rust and know nothing of Python; the
//! `python` module (behind the `python` feature) holds the thin PyO3 bindings.

pub mod budget;
pub mod clock;
pub mod error;
pub mod history;
pub mod ledger;
pub mod limiter;
pub mod limits;
pub mod pricing;
mod tls;
pub mod usage;
pub mod window;

#[cfg(test)]
mod test_redis;

#[cfg(feature = "python")]
mod python;
