//! `MeteringStore`: the one contract every ledger backend implements, so the
//! bindings, the budgets and the HTTP router work on any of them.

use crate::error::CoreResult;
use crate::ledger::budget_table::BudgetTable;
use crate::ledger::chain_verify::{Checkpoint, PositionRange, Receipt, VerifyReport};
use crate::ledger::event::UsageEvent;
use crate::ledger::export::Format;
use crate::ledger::filters::Filters;
use crate::pricing::Pricing;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

pub use crate::ledger::sqlite::{Aggregate, Durability, StoreStats};

/// A usage ledger. Every method may block (the bindings call them with the
/// interpreter released, or on the blocking pool) except `try_record_valid`
/// and the accessors, which only touch memory.
/// Every ledger keeps its budgets table too (`BudgetTable`).
pub trait MeteringStore: BudgetTable + Send + Sync {
    /// Where the ledger lives, for reprs and logs (never a password).
    fn location(&self) -> String;
    fn durability(&self) -> Durability;
    fn retention_us(&self) -> Option<i64>;
    fn is_closed(&self) -> bool;
    /// Events queued but not yet committed.
    fn queued(&self) -> u64;

    /// Records an event already validated; returns its request id. With
    /// `Durability::Commit` a conflicting duplicate is a `Conflict` error.
    fn record_valid(&self, event: Arc<UsageEvent>) -> CoreResult<String>;
    /// Queues an event without waiting: `Ok(None)` when queued (the writer
    /// commits it later, whatever the durability), the event handed back
    /// when the queue is full.
    fn try_record_valid(&self, event: Arc<UsageEvent>) -> CoreResult<Option<Arc<UsageEvent>>>;
    /// Records every event in one transaction, or none; returns how many were
    /// new. With a `timeout`, a failing database errs when it passes, and
    /// nothing of the batch is written.
    fn record_batch_valid(
        &self,
        events: Vec<Arc<UsageEvent>>,
        timeout: Option<Duration>,
    ) -> CoreResult<usize>;

    fn query(
        &self,
        filters: &Filters,
        limit: Option<u64>,
        offset: u64,
    ) -> CoreResult<Vec<UsageEvent>>;
    fn page(
        &self,
        filters: &Filters,
        limit: u64,
        offset: u64,
        cursor: Option<&str>,
    ) -> CoreResult<(Vec<UsageEvent>, Option<String>)>;
    fn aggregate(&self, group_by: &str, tz: &str, filters: &Filters) -> CoreResult<Vec<Aggregate>>;
    fn summary(&self, filters: &Filters) -> CoreResult<Aggregate>;
    /// Distinct agents (`"agent_id"`) or consumers (`"consumer_id"`) with their event counts.
    fn distinct(&self, column: &str, filters: &Filters) -> CoreResult<Vec<(String, u64)>>;
    fn stats(&self) -> CoreResult<StoreStats>;
    fn reprice(&self, pricing: Arc<Pricing>, filters: &Filters) -> CoreResult<usize>;
    /// Deletes events older than now − retention; returns how many.
    fn purge_expired(&self, timeout: Option<Duration>) -> CoreResult<usize>;
    fn export(
        &self,
        filters: &Filters,
        format: Format,
        limit: Option<u64>,
        out: &mut dyn Write,
    ) -> CoreResult<u64>;
    /// Returns once every event queued before the call is committed; with a
    /// `timeout`, errs when it passes (the events stay queued).
    fn flush(&self, timeout: Option<Duration>) -> CoreResult<()>;
    /// Commits what is queued and closes the store within `grace`, keeping
    /// what could not be committed by then (never dropping an acknowledged
    /// event); errs only if that failed. Idempotent.
    fn close(&self, grace: Duration) -> CoreResult<()>;

    /// Recomputes the hash chain of `namespace` (every namespace when
    /// `None`) over `range`, checking the `anchors` on the way; the report
    /// names the first problem. Must read one consistent snapshot.
    fn verify(
        &self,
        namespace: Option<&str>,
        range: PositionRange,
        anchors: &[Checkpoint],
    ) -> CoreResult<VerifyReport>;
    /// The canonical payload of one committed event, its place in the chain
    /// and the digests around it.
    fn receipt(&self, request_id: &str, namespace: &str) -> CoreResult<Receipt>;
    /// The head of `namespace`'s chain over the committed events.
    fn checkpoint(&self, namespace: &str) -> CoreResult<Checkpoint>;

    /// The database's own bound on which namespaces a role reads, where
    /// the backend has one (PostgreSQL's row-level security).
    fn namespace_grants(&self) -> Option<&dyn NamespaceGrants> {
        None
    }
}

/// Which database roles may read which namespaces, enforced by the
/// database for every connection of the role, raw SQL included.
pub trait NamespaceGrants {
    /// Lets `role` (an existing database role) read `namespace`.
    fn grant_namespace(&self, role: &str, namespace: &str) -> CoreResult<()>;
    /// Takes `namespace` back from `role`; `false` when it was not granted.
    fn revoke_namespace(&self, role: &str, namespace: &str) -> CoreResult<bool>;
    /// Every `(role, namespace)` granted, in order.
    fn granted(&self) -> CoreResult<Vec<(String, String)>>;
}
