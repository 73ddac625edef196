//! The budget engine: reserve the estimated cost before a call, settle the
//! actual cost after it, each atomic over every budget of the call in the
//! engine's state (this process's, or one shared through Redis), so
//! concurrent calls can never spend past a limit by more than what is in
//! flight.

use super::catalog::{Catalog, Entry, StoredSource};
use super::state::local::LocalState;
use super::state::redis::RESERVATION_DEADLINE_US;
use super::state::{BudgetState, Figures, Reserved, SlotSpec};
use super::{Action, Budget, CallScope, Period, Scope};
use crate::error::{CoreError, CoreResult};
use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Reads the spend a budget's scope value already has in the ledger for
/// `[start_us, end_us]` (a restart, or another process, spent it).
pub type SpendLoader = Box<dyn Fn(&Budget, &str, i64, i64) -> CoreResult<u64> + Send + Sync>;

#[derive(Clone, Debug, PartialEq)]
pub enum AlertKind {
    /// Spend reached this fraction of the limit (once per period).
    Threshold(f64),
    /// A new period began.
    Reset,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub budget: String,
    /// The namespace of a stored budget (`None` for one given in code).
    pub namespace: Option<String>,
    /// The scope's value (`""` for a global budget).
    pub scope_value: String,
    pub kind: AlertKind,
    pub spent_nanos: u64,
    pub limit_nanos: u64,
    pub period_start_us: i64,
    pub at_us: i64,
}

/// A call admitted: what it reserved, and the model to use instead if a
/// budget downgrades it.
#[derive(Debug)]
pub struct Admission {
    pub reservation: u64,
    pub downgrade_to: Option<String>,
    pub alerts: Vec<Alert>,
}

/// A call refused by a blocking budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub budget: String,
    pub scope_value: String,
    pub spent_nanos: u64,
    pub reserved_nanos: u64,
    pub limit_nanos: u64,
    pub next_reset_us: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub budget: String,
    pub namespace: Option<String>,
    pub scope: Scope,
    pub scope_value: String,
    pub spent_nanos: u64,
    pub reserved_nanos: u64,
    pub limit_nanos: u64,
    pub period_start_us: i64,
    pub next_reset_us: Option<i64>,
    pub thresholds_crossed: Vec<f64>,
}

/// A budget entry's id and the scope value.
type SlotKey = (u64, String);

/// What the engine itself keeps: the slots it has seen (and when it last
/// read their spend from the ledger), and its reservations in flight.
#[derive(Default)]
struct Local {
    synced: HashMap<SlotKey, i64>,
    reservations: HashMap<u64, Vec<SlotKey>>,
    /// Each slot's spec, kept until its period ends (a calendar in a time
    /// zone is not worked out again on every call).
    specs: HashMap<SlotKey, SlotSpec>,
}

impl Local {
    /// The spec of slot `key` of `entry` at `now_us`.
    fn spec(&mut self, entry: &Entry, key: &SlotKey, now_us: i64) -> SlotSpec {
        // A reset stamped ahead of this clock moves the start until then: not kept.
        let steady = entry.counted_from_us.is_none_or(|reset| reset <= now_us);
        if let Some(kept) = self.specs.get(key).filter(|_| steady) {
            match (entry.budget.period, kept.next_reset) {
                (Period::Rolling(window), _) if entry.counted_from_us.is_none() => {
                    let mut spec = kept.clone();
                    spec.period_start = now_us.saturating_sub(window);
                    return spec;
                }
                (Period::Total, _) => return kept.clone(),
                (_, Some(next)) if now_us >= kept.period_start && now_us < next => {
                    return kept.clone()
                }
                _ => {}
            }
        }
        let spec = slot_spec(entry, &key.1, now_us);
        if steady {
            self.specs.insert(key.clone(), spec.clone());
        }
        spec
    }
}

/// How long a slot's state is kept past the end of its period (or, for
/// periods that do not end, after its last use).
const KEEP_US: i64 = 86_400_000_000;

/// How many times a call is tried again when its spend keeps being lost
/// between seeding it and reserving (an evicting Redis).
const SEED_TRIES: usize = 3;

pub struct Engine {
    budgets: Vec<Budget>,
    loader: SpendLoader,
    /// How often a slot's spend (and the stored budgets) are read again from
    /// the ledger, where other processes record theirs; `None`: only when
    /// first needed.
    refresh_us: Option<i64>,
    state: Arc<dyn BudgetState>,
    local: Mutex<Local>,
    next_reservation: AtomicU64,
    catalog: RwLock<Arc<Catalog>>,
    stored: Option<StoredSource>,
    /// When the stored budgets were last read.
    stored_synced: Mutex<Option<i64>>,
    ids: AtomicU64,
}

/// The state's view of one slot of `entry` at `now_us`.
fn slot_spec(entry: &Entry, value: &str, now_us: i64) -> SlotSpec {
    let budget = &entry.budget;
    let (start, next) = entry.bounds(now_us);
    let window_us = match budget.period {
        Period::Rolling(window) => Some(window),
        _ => None,
    };
    let lasts = match (next, window_us) {
        (Some(next), _) => next.saturating_sub(now_us),
        (None, Some(window)) => window,
        (None, None) => 0,
    };
    SlotSpec {
        id: Arc::from(format!("{}:{value}", entry.identity)),
        limit: budget.limit_nanos,
        soft: budget.soft,
        blocks: budget.action == Action::Block,
        period_start: start,
        window_us,
        thresholds: budget
            .thresholds
            .iter()
            .map(|t| (t * budget.limit_nanos as f64).ceil() as u64)
            .collect::<Vec<_>>()
            .into(),
        keep_us: lasts
            .saturating_add(KEEP_US)
            .max(RESERVATION_DEADLINE_US + 60_000_000),
        next_reset: next,
    }
}

fn alert(
    entry: &Entry,
    value: &str,
    kind: AlertKind,
    spent: u64,
    start: i64,
    now_us: i64,
) -> Alert {
    Alert {
        budget: entry.budget.name.clone(),
        namespace: entry.budget.namespace.clone(),
        scope_value: value.to_string(),
        kind,
        spent_nanos: spent,
        limit_nanos: entry.budget.limit_nanos,
        period_start_us: start,
        at_us: now_us,
    }
}

/// The alerts an operation's figures call for: a new period, and the
/// thresholds that fired with it.
fn alerts_of(
    entry: &Entry,
    spec: &SlotSpec,
    value: &str,
    f: &Figures,
    now_us: i64,
    out: &mut Vec<Alert>,
) {
    if f.rolled {
        out.push(alert(
            entry,
            value,
            AlertKind::Reset,
            0,
            spec.period_start,
            now_us,
        ));
    }
    let fired = f.fired.min(entry.budget.thresholds.len());
    for t in &entry.budget.thresholds[f.fired_before.min(fired)..fired] {
        out.push(alert(
            entry,
            value,
            AlertKind::Threshold(*t),
            f.spent,
            spec.period_start,
            now_us,
        ));
    }
}

impl Engine {
    pub fn new(
        budgets: Vec<Budget>,
        loader: SpendLoader,
        refresh_us: Option<i64>,
    ) -> CoreResult<Engine> {
        for (i, b) in budgets.iter().enumerate() {
            if budgets[..i].iter().any(|other| other.name == b.name) {
                return Err(CoreError::InvalidArgument(
                    "budgets",
                    format!("two budgets are named {:?}", b.name),
                ));
            }
        }
        let ids = AtomicU64::new(0);
        let catalog = Catalog::of_code(budgets.clone(), &ids);
        Ok(Engine {
            budgets,
            loader,
            refresh_us,
            state: Arc::new(LocalState::default()),
            local: Mutex::new(Local::default()),
            next_reservation: AtomicU64::new(1),
            catalog: RwLock::new(Arc::new(catalog)),
            stored: None,
            stored_synced: Mutex::new(None),
            ids,
        })
    }

    /// Also enforces the budgets `source` reads from the ledger database,
    /// read at the first call and again every `refresh_us` (see `Catalog`
    /// for how they combine with the budgets given in code).
    pub fn with_stored(mut self, source: StoredSource) -> Engine {
        self.stored = Some(source);
        self
    }

    /// Keeps spend and reservations in `state` (shared by processes, say)
    /// instead of in this process.
    pub fn with_state(mut self, state: Arc<dyn BudgetState>) -> Engine {
        self.state = state;
        self
    }

    /// The budgets given in code.
    pub fn budgets(&self) -> &[Budget] {
        &self.budgets
    }

    /// Every budget enforced now: code budgets, then stored ones.
    pub fn enforced(&self, now_us: i64) -> CoreResult<Vec<Budget>> {
        self.sync_stored(now_us)?;
        let catalog = self.catalog.read().clone();
        Ok(catalog.entries.iter().map(|e| e.budget.clone()).collect())
    }

    /// Reads the stored budgets again when they are due; a budget that
    /// changed gets a new entry, and the spend of the old one is dropped.
    fn sync_stored(&self, now_us: i64) -> CoreResult<()> {
        let Some(source) = &self.stored else {
            return Ok(());
        };
        {
            let mut synced = self.stored_synced.lock();
            let due = match (*synced, self.refresh_us) {
                (None, _) => true,
                (Some(at), Some(every)) => now_us.saturating_sub(at) >= every,
                (Some(_), None) => false,
            };
            if !due {
                return Ok(());
            }
            *synced = Some(now_us);
        }
        let rows = match source() {
            Ok(rows) => rows,
            Err(e) => {
                // Tried again at the next call rather than after a whole refresh.
                *self.stored_synced.lock() = None;
                return Err(e);
            }
        };
        let old = self.catalog();
        let next = Arc::new(old.with_stored(rows, &self.ids));
        let mut gone = Vec::new();
        let mut local = self.local.lock();
        local.specs.retain(|key, _| next.get(key.0).is_some());
        local.synced.retain(|key, _| {
            let kept = next.get(key.0).is_some();
            if !kept {
                if let Some(entry) = old.get(key.0) {
                    gone.push(slot_spec(entry, &key.1, now_us).id);
                }
            }
            kept
        });
        drop(local);
        self.state.forget(&gone);
        *self.catalog.write() = next;
        Ok(())
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    /// Reads again from the ledger the spend of slots last read more than
    /// `refresh_us` ago (other processes spend too), without holding a lock.
    fn refresh(
        &self,
        catalog: &Catalog,
        keys: &[SlotKey],
        now_us: i64,
        alerts: &mut Vec<Alert>,
    ) -> CoreResult<()> {
        let Some(every) = self.refresh_us else {
            return Ok(());
        };
        let stale: Vec<usize> = {
            let local = self.local.lock();
            (0..keys.len())
                .filter(|i| {
                    local
                        .synced
                        .get(&keys[*i])
                        .is_some_and(|at| now_us.saturating_sub(*at) >= every)
                })
                .collect()
        };
        self.read_ledger(catalog, keys, &stale, now_us, alerts)
    }

    /// Merges what the ledger says slots `which` of `keys` spent this period
    /// into the state (a new slot starts from it).
    fn read_ledger(
        &self,
        catalog: &Catalog,
        keys: &[SlotKey],
        which: &[usize],
        now_us: i64,
        alerts: &mut Vec<Alert>,
    ) -> CoreResult<()> {
        let mut read = Vec::with_capacity(which.len());
        for &i in which {
            let Some(entry) = catalog.get(keys[i].0) else {
                continue;
            };
            let spec = self.local.lock().spec(entry, &keys[i], now_us);
            let recorded = (self.loader)(&entry.budget, &keys[i].1, spec.period_start, now_us)?;
            read.push((i, entry, spec, recorded));
        }
        if read.is_empty() {
            return Ok(());
        }
        let specs: Vec<SlotSpec> = read.iter().map(|r| r.2.clone()).collect();
        let recorded: Vec<u64> = read.iter().map(|r| r.3).collect();
        let figures = self.state.merge(&specs, &recorded, now_us)?;
        let mut local = self.local.lock();
        for ((i, entry, spec, _), f) in read.iter().zip(&figures) {
            alerts_of(entry, spec, &keys[*i].1, f, now_us, alerts);
            local.synced.insert(keys[*i].clone(), now_us);
        }
        Ok(())
    }

    /// Reserves `estimate_nanos` on every budget covering the call, or
    /// refuses it (reserving nothing) if a blocking budget would go over.
    pub fn check(
        &self,
        call: &CallScope,
        estimate_nanos: u64,
        now_us: i64,
    ) -> CoreResult<Result<Admission, Refusal>> {
        self.sync_stored(now_us)?;
        let catalog = self.catalog();
        // A budget replaced meanwhile: its replacement counts from the next call.
        let keys: Vec<SlotKey> = catalog
            .covering(call)
            .into_iter()
            .filter(|k| catalog.get(k.0).is_some())
            .collect();
        let mut alerts = Vec::new();
        self.refresh(&catalog, &keys, now_us, &mut alerts)?;
        let entries: Vec<&Arc<Entry>> = keys.iter().filter_map(|k| catalog.get(k.0)).collect();
        let specs: Vec<SlotSpec> = {
            let mut local = self.local.lock();
            entries
                .iter()
                .zip(&keys)
                .map(|(e, k)| local.spec(e, k, now_us))
                .collect()
        };
        let id = self.next_reservation.fetch_add(1, Ordering::Relaxed);
        for _ in 0..SEED_TRIES {
            let figures = if specs.is_empty() {
                Vec::new()
            } else {
                match self.state.reserve(&specs, id, estimate_nanos, now_us)? {
                    Reserved::Admitted(figures) => figures,
                    Reserved::Unknown(unknown) => {
                        self.read_ledger(&catalog, &keys, &unknown, now_us, &mut alerts)?;
                        continue;
                    }
                    Reserved::Refused { index, figures } => {
                        let budget = &entries[index].budget;
                        let f = &figures[index];
                        return Ok(Err(Refusal {
                            budget: budget.name.clone(),
                            scope_value: keys[index].1.clone(),
                            spent_nanos: f.spent,
                            reserved_nanos: f.reserved,
                            limit_nanos: budget.limit_nanos,
                            next_reset_us: specs[index].next_reset,
                        }));
                    }
                }
            };
            let mut downgrade_to = None;
            for (((entry, spec), key), f) in entries.iter().zip(&specs).zip(&keys).zip(&figures) {
                alerts_of(entry, spec, &key.1, f, now_us, &mut alerts);
                if let (true, Action::Downgrade(model)) = (f.over, &entry.budget.action) {
                    if downgrade_to.is_none() && call.model.as_deref() != Some(model) {
                        downgrade_to = Some(model.clone());
                    }
                }
            }
            let mut local = self.local.lock();
            for key in &keys {
                local.synced.entry(key.clone()).or_insert(now_us);
            }
            local.reservations.insert(id, keys);
            return Ok(Ok(Admission {
                reservation: id,
                downgrade_to,
                alerts,
            }));
        }
        Err(CoreError::Unavailable(
            "the shared budget state kept losing the spend seeded from the ledger \
             (is Redis evicting keys?)"
                .into(),
        ))
    }

    /// Replaces a reservation's estimate with the actual cost; returns the
    /// thresholds this crossed (each fires once per period).
    pub fn settle(
        &self,
        reservation: u64,
        actual_nanos: u64,
        now_us: i64,
    ) -> CoreResult<Vec<Alert>> {
        let keys = self
            .local
            .lock()
            .reservations
            .remove(&reservation)
            .ok_or_else(|| {
                CoreError::InvalidArgument("reservation", "is unknown or already settled".into())
            })?;
        let catalog = self.catalog();
        let held: Vec<(&Arc<Entry>, &SlotKey)> = keys
            .iter()
            .filter_map(|k| Some((catalog.get(k.0)?, k)))
            .collect();
        let mut alerts = Vec::new();
        if held.is_empty() {
            return Ok(alerts);
        }
        let specs: Vec<SlotSpec> = {
            let mut local = self.local.lock();
            held.iter().map(|(e, k)| local.spec(e, k, now_us)).collect()
        };
        let figures = self
            .state
            .settle(&specs, reservation, actual_nanos, now_us)?;
        for (((entry, key), spec), f) in held.iter().zip(&specs).zip(&figures) {
            alerts_of(entry, spec, &key.1, f, now_us, &mut alerts);
        }
        Ok(alerts)
    }

    /// Every budget and scope value seen, oldest budget first.
    pub fn status(&self, now_us: i64) -> CoreResult<Vec<Status>> {
        let catalog = self.catalog();
        let keys: Vec<SlotKey> = self.local.lock().synced.keys().cloned().collect();
        let seen: Vec<(&Arc<Entry>, SlotKey)> = keys
            .into_iter()
            .filter_map(|k| Some((catalog.get(k.0)?, k)))
            .collect();
        let specs: Vec<SlotSpec> = {
            let mut local = self.local.lock();
            seen.iter().map(|(e, k)| local.spec(e, k, now_us)).collect()
        };
        let figures = self.state.figures(&specs, now_us)?;
        let mut out: Vec<(usize, Status)> = seen
            .iter()
            .zip(&specs)
            .zip(figures)
            .map(|(((entry, key), spec), f)| {
                let budget = &entry.budget;
                let f = f.unwrap_or_default();
                let status = Status {
                    budget: budget.name.clone(),
                    namespace: budget.namespace.clone(),
                    scope: budget.scope,
                    scope_value: key.1.clone(),
                    spent_nanos: f.spent,
                    reserved_nanos: f.reserved,
                    limit_nanos: budget.limit_nanos,
                    period_start_us: spec.period_start,
                    next_reset_us: spec.next_reset,
                    thresholds_crossed: budget.thresholds[..f.fired.min(budget.thresholds.len())]
                        .to_vec(),
                };
                (catalog.position(key.0), status)
            })
            .collect();
        out.sort_by(|a, b| (a.0, &a.1.scope_value).cmp(&(b.0, &b.1.scope_value)));
        Ok(out.into_iter().map(|(_, status)| status).collect())
    }
}

#[cfg(test)]
mod tests;
