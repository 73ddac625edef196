//! The budgets an engine enforces: those given in code, and those kept in
//! the ledger database, read again on the engine's refresh. A stored budget
//! covers only the calls of its namespace, and there it replaces a budget
//! given in code under the same name; elsewhere the code budget still holds.

use super::{definition, Budget, CallScope};
use crate::error::CoreResult;
use crate::ledger::budget_table::StoredBudget;
use hashbrown::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Reads every live stored budget (of every namespace).
pub type StoredSource = Box<dyn Fn() -> CoreResult<Vec<StoredBudget>> + Send + Sync>;

/// One budget being enforced. A stored budget gets a new id whenever its
/// definition or reset time changes, so its spend is counted afresh.
pub struct Entry {
    pub id: u64,
    pub budget: Budget,
    /// Spend counts from here (a reset), not from the period's start.
    pub counted_from_us: Option<i64>,
    /// What the row said, to tell an unchanged stored budget from a new one.
    origin: Option<(String, Option<i64>)>,
    /// The same in every process enforcing the same budget (its namespace,
    /// name, definition and last reset): what a shared state names it by.
    pub identity: Arc<str>,
}

/// A digest of what makes a budget the same budget in every process.
fn identity_of(budget: &Budget, counted_from_us: Option<i64>) -> Arc<str> {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    for part in [
        budget.namespace.as_deref().unwrap_or(""),
        &budget.name,
        &definition::to_json(budget),
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.update(counted_from_us.unwrap_or(i64::MIN).to_le_bytes());
    let digest = hasher.finalize();
    Arc::from(
        digest[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    )
}

impl Entry {
    /// The period holding `now_us` as `[start, next_reset)`, starting no
    /// earlier than the last reset (nor later than now: a reset stamped by a
    /// host whose clock runs ahead).
    pub fn bounds(&self, now_us: i64) -> (i64, Option<i64>) {
        let (start, next) = self.budget.period.bounds(now_us, self.budget.tz);
        (counted_from(start, self.counted_from_us, now_us), next)
    }
}

/// A period's start moved to a reset within it.
pub fn counted_from(start_us: i64, reset_us: Option<i64>, now_us: i64) -> i64 {
    match reset_us {
        Some(reset) if reset > start_us => reset.min(now_us),
        _ => start_us,
    }
}

#[derive(Default)]
pub struct Catalog {
    /// Code budgets first (in the order given), then stored ones by namespace and name.
    pub entries: Vec<Arc<Entry>>,
    by_id: HashMap<u64, usize>,
    /// `(namespace, name)` of every stored budget, which hides a code budget of that name there.
    stored_names: HashSet<(String, String)>,
}

impl Catalog {
    pub fn of_code(budgets: Vec<Budget>, ids: &AtomicU64) -> Catalog {
        let entries = budgets
            .into_iter()
            .map(|budget| {
                Arc::new(Entry {
                    id: ids.fetch_add(1, Ordering::Relaxed),
                    identity: identity_of(&budget, None),
                    budget,
                    counted_from_us: None,
                    origin: None,
                })
            })
            .collect();
        Catalog::from_entries(entries)
    }

    fn from_entries(entries: Vec<Arc<Entry>>) -> Catalog {
        let by_id = entries.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
        let stored_names = entries
            .iter()
            .filter_map(|e| Some((e.budget.namespace.clone()?, e.budget.name.clone())))
            .collect();
        Catalog {
            entries,
            by_id,
            stored_names,
        }
    }

    /// This catalog's code budgets with `rows` as the stored ones; entries
    /// whose row did not change keep their id (and so their spend).
    pub fn with_stored(&self, rows: Vec<StoredBudget>, ids: &AtomicU64) -> Catalog {
        let old: HashMap<(&str, &str), &Arc<Entry>> = self
            .entries
            .iter()
            .filter_map(|e| Some(((e.budget.namespace.as_deref()?, e.budget.name.as_str()), e)))
            .collect();
        let mut entries: Vec<Arc<Entry>> = self
            .entries
            .iter()
            .filter(|e| e.budget.namespace.is_none())
            .cloned()
            .collect();
        for row in rows.into_iter().filter(StoredBudget::is_live) {
            let origin = Some((row.definition.clone(), row.reset_us));
            if let Some(kept) = old.get(&(row.namespace.as_str(), row.name.as_str())) {
                if kept.origin == origin {
                    entries.push(Arc::clone(kept));
                    continue;
                }
            }
            // A row this version cannot read is left out rather than failing every call.
            let Ok(mut budget) = definition::from_json(&row.name, &row.definition) else {
                continue;
            };
            budget.namespace = Some(row.namespace);
            entries.push(Arc::new(Entry {
                id: ids.fetch_add(1, Ordering::Relaxed),
                identity: identity_of(&budget, row.reset_us),
                budget,
                counted_from_us: row.reset_us,
                origin,
            }));
        }
        Catalog::from_entries(entries)
    }

    pub fn get(&self, id: u64) -> Option<&Arc<Entry>> {
        self.by_id.get(&id).map(|&i| &self.entries[i])
    }

    /// Where `id` sorts among the budgets (for status listings).
    pub fn position(&self, id: u64) -> usize {
        self.by_id.get(&id).copied().unwrap_or(usize::MAX)
    }

    /// The ids of the budgets covering a call, with the scope value each sees.
    pub fn covering(&self, call: &CallScope) -> Vec<(u64, String)> {
        self.entries
            .iter()
            .filter(|e| match &e.budget.namespace {
                Some(ns) => *ns == call.namespace,
                None => {
                    self.stored_names.is_empty()
                        || !self
                            .stored_names
                            .contains(&(call.namespace.clone(), e.budget.name.clone()))
                }
            })
            .filter_map(|e| {
                let value = call.value(e.budget.scope)?;
                match &e.budget.matches {
                    Some(m) if m != value => None,
                    _ => Some((e.id, value.to_string())),
                }
            })
            .collect()
    }
}
