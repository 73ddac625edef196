//! Where an engine keeps each budget slot's settled spend and in-flight
//! estimates: in the process (`LocalState`), or on a Redis server shared by
//! every process and host (`RedisState`), so that each sees the others'
//! calls in flight. The engine runs one code path over either.
//!
//! A slot is one budget and one value of its scope. Every operation takes
//! the slots it touches with what the state needs to judge them (limit,
//! period, thresholds), moves each into its current period first, and is
//! atomic over all of them.

pub mod fallback;
pub mod local;
pub mod redis;

use crate::error::CoreResult;
use std::sync::Arc;

/// One slot as an operation needs it.
#[derive(Clone, Debug)]
pub struct SlotSpec {
    /// The same in every process for the same budget and scope value.
    pub id: Arc<str>,
    pub limit: u64,
    /// Admits while spend and reservations are below the limit, even if the
    /// call may take it over.
    pub soft: bool,
    /// Refuses a call that would go over (a blocking budget).
    pub blocks: bool,
    /// The start of the period holding now (`i64::MIN`: never resets).
    pub period_start: i64,
    /// When the period ends (`None`: it never does, or it slides).
    pub next_reset: Option<i64>,
    /// Rolling periods: the window in µs (spend older than it is forgotten).
    pub window_us: Option<i64>,
    /// Each threshold as an amount (nano-USD), ascending.
    pub thresholds: Arc<[u64]>,
    /// How long the slot's state must outlive now: past the period's end.
    pub keep_us: i64,
}

impl SlotSpec {
    /// How many thresholds `spent` has reached (they are ascending, so the
    /// ones reached are always the first so many).
    pub fn crossed(&self, spent: u64) -> usize {
        self.thresholds.iter().take_while(|t| spent >= **t).count()
    }

    /// Whether a call of `estimate` on these figures goes over the limit.
    pub fn over(&self, spent: u64, reserved: u64, estimate: u64) -> bool {
        let committed = spent.saturating_add(reserved);
        if self.soft {
            committed >= self.limit
        } else {
            committed.saturating_add(estimate) > self.limit
        }
    }
}

/// A slot's figures after (or, for a refused call, at) an operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub spent: u64,
    pub reserved: u64,
    /// The call would take it over its limit (reserve only).
    pub over: bool,
    /// A new calendar period began with this operation.
    pub rolled: bool,
    /// How many thresholds had fired this period before the operation,
    /// and after it: those in between fire now.
    pub fired_before: usize,
    pub fired: usize,
}

#[derive(Debug)]
pub enum Reserved {
    /// Recorded on every slot (each slot's figures before the call).
    Admitted(Vec<Figures>),
    /// Slot `index` blocks the call; nothing was recorded.
    Refused { index: usize, figures: Vec<Figures> },
    /// These slots have no known spend (new, or lost by the state): seed
    /// them from the ledger with `merge`, then reserve again.
    Unknown(Vec<usize>),
}

/// The spend and reservations of budget slots, checked and recorded
/// atomically over all the slots of one call.
pub trait BudgetState: Send + Sync {
    /// Reserves `estimate` on every slot as reservation `id`, or on none if
    /// a blocking slot would go over.
    fn reserve(
        &self,
        slots: &[SlotSpec],
        id: u64,
        estimate: u64,
        now_us: i64,
    ) -> CoreResult<Reserved>;

    /// Releases reservation `id` on each slot and adds `actual` to its spend
    /// (a slot whose spend was lost meanwhile is left to be seeded again from
    /// the ledger, and its figures are all zero); one figure per slot.
    fn settle(
        &self,
        slots: &[SlotSpec],
        id: u64,
        actual: u64,
        now_us: i64,
    ) -> CoreResult<Vec<Figures>>;

    /// What the ledger says each slot spent this period (`recorded`, one
    /// per slot): an unknown slot starts from it (its thresholds already
    /// passed stay quiet), a known one takes it if larger; so two processes
    /// seeding the same slot never count it twice.
    fn merge(&self, slots: &[SlotSpec], recorded: &[u64], now_us: i64) -> CoreResult<Vec<Figures>>;

    /// Each slot's figures as of now (`None`: unknown), changing nothing
    /// that an alert depends on.
    fn figures(&self, slots: &[SlotSpec], now_us: i64) -> CoreResult<Vec<Option<Figures>>>;

    /// The slots of budgets no longer enforced.
    fn forget(&self, ids: &[Arc<str>]);
}
