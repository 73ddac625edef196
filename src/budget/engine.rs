//! The budget engine: reserve the estimated cost before a call, settle the
//! actual cost after it, all under one lock, so concurrent calls can never
//! spend past a limit by more than what is in flight.

use super::catalog::{Catalog, Entry, StoredSource};
use super::{Action, Budget, CallScope, Period, Scope};
use crate::error::{CoreError, CoreResult};
use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
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

struct Slot {
    period_start: i64,
    next_reset: Option<i64>,
    spent: u64,
    reserved: u64,
    /// Bit i: threshold i fired this period.
    fired: u64,
    /// Rolling periods: what was spent when, oldest first.
    recent: VecDeque<(i64, u64)>,
    /// When the spend was last read from the ledger.
    synced_at: i64,
}

struct Held {
    key: SlotKey,
    estimate: u64,
}

#[derive(Default)]
struct State {
    slots: HashMap<SlotKey, Slot>,
    reservations: HashMap<u64, Vec<Held>>,
    next_id: u64,
}

pub struct Engine {
    budgets: Vec<Budget>,
    loader: SpendLoader,
    /// How often a slot's spend (and the stored budgets) are read again from
    /// the ledger, where other processes record theirs; `None`: only when
    /// first needed.
    refresh_us: Option<i64>,
    state: Mutex<State>,
    catalog: RwLock<Arc<Catalog>>,
    stored: Option<StoredSource>,
    /// When the stored budgets were last read.
    stored_synced: Mutex<Option<i64>>,
    ids: AtomicU64,
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
            state: Mutex::new(State::default()),
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
        let next = Arc::new(self.catalog.read().with_stored(rows, &self.ids));
        let mut state = self.state.lock();
        state.slots.retain(|key, _| next.get(key.0).is_some());
        *self.catalog.write() = next;
        Ok(())
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    /// Makes sure every slot exists, loading the spend of new ones from the
    /// ledger without holding the lock; and reads again the spend of slots
    /// last read more than `refresh_us` ago (other processes spend too).
    fn load(
        &self,
        catalog: &Catalog,
        keys: &[SlotKey],
        now_us: i64,
        alerts: &mut Vec<Alert>,
    ) -> CoreResult<()> {
        let (missing, stale): (Vec<&SlotKey>, Vec<&SlotKey>) = {
            let state = self.state.lock();
            let missing = keys
                .iter()
                .filter(|k| !state.slots.contains_key(*k))
                .collect();
            let stale = match self.refresh_us {
                Some(every) => keys
                    .iter()
                    .filter(|k| {
                        state
                            .slots
                            .get(*k)
                            .is_some_and(|s| now_us.saturating_sub(s.synced_at) >= every)
                    })
                    .collect(),
                None => Vec::new(),
            };
            (missing, stale)
        };
        for key in stale {
            let Some(entry) = catalog.get(key.0) else {
                continue;
            };
            let budget = &entry.budget;
            let (start, _) = entry.bounds(now_us);
            let recorded = (self.loader)(budget, &key.1, start, now_us)?;
            let mut state = self.state.lock();
            let Some(slot) = state.slots.get_mut(key) else {
                continue;
            };
            roll(entry, &key.1, slot, now_us, alerts);
            slot.synced_at = now_us;
            // What this process settled may not be recorded yet: the larger wins.
            if slot.period_start == start && recorded > slot.spent {
                let more = recorded - slot.spent;
                slot.spent = recorded;
                if matches!(budget.period, Period::Rolling(_)) {
                    slot.recent.push_back((now_us, more));
                }
                fire_thresholds(entry, &key.1, slot, now_us, alerts);
            }
        }
        for key in missing {
            let Some(entry) = catalog.get(key.0) else {
                continue;
            };
            let budget = &entry.budget;
            let (start, next) = entry.bounds(now_us);
            let spent = (self.loader)(budget, &key.1, start, now_us)?;
            let mut recent = VecDeque::new();
            if matches!(budget.period, Period::Rolling(_)) && spent > 0 {
                // Spent at unknown times within the window: counted as of now.
                recent.push_back((now_us, spent));
            }
            let mut slot = Slot {
                period_start: start,
                next_reset: next,
                spent,
                reserved: 0,
                fired: 0,
                recent,
                synced_at: now_us,
            };
            // Thresholds already passed before this process saw them stay quiet.
            slot.fired = crossed(budget, slot.spent);
            self.state.lock().slots.entry(key.clone()).or_insert(slot);
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
        let keys = catalog.covering(call);
        let mut alerts = Vec::new();
        self.load(&catalog, &keys, now_us, &mut alerts)?;
        let mut state = self.state.lock();
        let mut downgrade_to = None;
        for key in &keys {
            // A budget replaced meanwhile: its replacement counts from the next call.
            let (Some(entry), Some(slot)) = (catalog.get(key.0), state.slots.get_mut(key)) else {
                continue;
            };
            let budget = &entry.budget;
            roll(entry, &key.1, slot, now_us, &mut alerts);
            let committed = slot.spent.saturating_add(slot.reserved);
            let over = if budget.soft {
                committed >= budget.limit_nanos
            } else {
                committed.saturating_add(estimate_nanos) > budget.limit_nanos
            };
            if !over {
                continue;
            }
            match &budget.action {
                Action::Alert => {}
                Action::Block => {
                    return Ok(Err(Refusal {
                        budget: budget.name.clone(),
                        scope_value: key.1.clone(),
                        spent_nanos: slot.spent,
                        reserved_nanos: slot.reserved,
                        limit_nanos: budget.limit_nanos,
                        next_reset_us: slot.next_reset,
                    }));
                }
                Action::Downgrade(model) => {
                    if downgrade_to.is_none() && call.model.as_deref() != Some(model) {
                        downgrade_to = Some(model.clone());
                    }
                }
            }
        }
        let mut held = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(slot) = state.slots.get_mut(&key) else {
                continue;
            };
            slot.reserved = slot.reserved.saturating_add(estimate_nanos);
            held.push(Held {
                key,
                estimate: estimate_nanos,
            });
        }
        state.next_id += 1;
        let id = state.next_id;
        state.reservations.insert(id, held);
        Ok(Ok(Admission {
            reservation: id,
            downgrade_to,
            alerts,
        }))
    }

    /// Replaces a reservation's estimate with the actual cost; returns the
    /// thresholds this crossed (each fires once per period).
    pub fn settle(
        &self,
        reservation: u64,
        actual_nanos: u64,
        now_us: i64,
    ) -> CoreResult<Vec<Alert>> {
        let mut state = self.state.lock();
        let held = state.reservations.remove(&reservation).ok_or_else(|| {
            CoreError::InvalidArgument("reservation", "is unknown or already settled".into())
        })?;
        let mut alerts = Vec::new();
        let catalog = self.catalog();
        for h in held {
            let (Some(entry), Some(slot)) = (catalog.get(h.key.0), state.slots.get_mut(&h.key))
            else {
                continue;
            };
            let budget = &entry.budget;
            roll(entry, &h.key.1, slot, now_us, &mut alerts);
            // In-flight calls stay reserved across a reset, and their cost lands
            // in the period they finish in.
            slot.reserved = slot.reserved.saturating_sub(h.estimate);
            slot.spent = slot.spent.saturating_add(actual_nanos);
            if matches!(budget.period, Period::Rolling(_)) && actual_nanos > 0 {
                slot.recent.push_back((now_us, actual_nanos));
            }
            fire_thresholds(entry, &h.key.1, slot, now_us, &mut alerts);
        }
        Ok(alerts)
    }

    /// Every budget and scope value seen, oldest budget first.
    pub fn status(&self, now_us: i64) -> Vec<Status> {
        let catalog = self.catalog();
        let mut state = self.state.lock();
        let mut ignored = Vec::new();
        let mut out: Vec<(usize, Status)> = state
            .slots
            .iter_mut()
            .filter_map(|(key, slot)| {
                let entry = catalog.get(key.0)?;
                let budget = &entry.budget;
                roll(entry, &key.1, slot, now_us, &mut ignored);
                let status = Status {
                    budget: budget.name.clone(),
                    namespace: budget.namespace.clone(),
                    scope: budget.scope,
                    scope_value: key.1.clone(),
                    spent_nanos: slot.spent,
                    reserved_nanos: slot.reserved,
                    limit_nanos: budget.limit_nanos,
                    period_start_us: slot.period_start,
                    next_reset_us: slot.next_reset,
                    thresholds_crossed: budget
                        .thresholds
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| slot.fired & (1 << i) != 0)
                        .map(|(_, t)| *t)
                        .collect(),
                };
                Some((catalog.position(key.0), status))
            })
            .collect();
        out.sort_by(|a, b| (a.0, &a.1.scope_value).cmp(&(b.0, &b.1.scope_value)));
        out.into_iter().map(|(_, status)| status).collect()
    }
}

/// Alerts for the thresholds the slot's spend reached that had not fired.
fn fire_thresholds(
    entry: &Entry,
    value: &str,
    slot: &mut Slot,
    now_us: i64,
    alerts: &mut Vec<Alert>,
) {
    let budget = &entry.budget;
    let now_crossed = crossed(budget, slot.spent);
    for (i, t) in budget.thresholds.iter().enumerate() {
        let bit = 1 << i;
        if now_crossed & bit != 0 && slot.fired & bit == 0 {
            slot.fired |= bit;
            alerts.push(Alert {
                budget: budget.name.clone(),
                namespace: budget.namespace.clone(),
                scope_value: value.to_string(),
                kind: AlertKind::Threshold(*t),
                spent_nanos: slot.spent,
                limit_nanos: budget.limit_nanos,
                period_start_us: slot.period_start,
                at_us: now_us,
            });
        }
    }
}

/// Threshold bits reached by `spent`.
fn crossed(budget: &Budget, spent: u64) -> u64 {
    budget
        .thresholds
        .iter()
        .enumerate()
        .filter(|(_, t)| spent as f64 >= **t * budget.limit_nanos as f64)
        .fold(0, |bits, (i, _)| bits | (1 << i))
}

/// Moves a slot into the period holding `now_us`: a calendar period starts
/// afresh (a "reset" alert); a rolling one drops what slid out.
fn roll(entry: &Entry, value: &str, slot: &mut Slot, now_us: i64, alerts: &mut Vec<Alert>) {
    let budget = &entry.budget;
    if let Period::Rolling(window) = budget.period {
        while let Some(&(at, cost)) = slot.recent.front() {
            if at > now_us - window {
                break;
            }
            slot.recent.pop_front();
            slot.spent = slot.spent.saturating_sub(cost);
        }
        slot.period_start = entry.bounds(now_us).0;
        // Thresholds re-arm once spend slides back under them.
        slot.fired &= crossed(budget, slot.spent);
        return;
    }
    match slot.next_reset {
        Some(next) if now_us >= next => {}
        _ => return,
    }
    let (start, next) = entry.bounds(now_us);
    slot.period_start = start;
    slot.next_reset = next;
    slot.spent = 0;
    slot.fired = 0;
    alerts.push(Alert {
        budget: budget.name.clone(),
        namespace: budget.namespace.clone(),
        scope_value: value.to_string(),
        kind: AlertKind::Reset,
        spent_nanos: 0,
        limit_nanos: budget.limit_nanos,
        period_start_us: start,
        at_us: now_us,
    });
}

#[cfg(test)]
mod tests;
