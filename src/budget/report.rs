//! What a stored budget has spent, read from the ledger alone (no engine):
//! its status per scope value over the current period, and its daily
//! history. In-flight reservations live in engines and are not counted.

use super::engine::Status;
use super::{definition, Budget, Scope};
use crate::error::CoreResult;
use crate::ledger::budget_table::StoredBudget;
use crate::ledger::filters::Filters;
use crate::ledger::store::MeteringStore;

/// The ledger filters of `budget`'s spend for scope value `value` over
/// `[start_us, end_us]`; a stored budget counts only its namespace.
pub fn spend_filters(budget: &Budget, value: &str, start_us: i64, end_us: i64) -> Filters {
    let mut f = Filters {
        namespace: budget.namespace.clone(),
        start_us: (start_us > i64::MIN).then_some(start_us),
        end_us: Some(end_us),
        ..Filters::default()
    };
    let value = Some(value.to_string());
    match budget.scope {
        Scope::Global => {}
        Scope::Namespace => f.namespace = value,
        Scope::Agent => f.agent_id = value,
        Scope::Consumer => f.consumer_id = value,
        Scope::Model => f.model = value,
        Scope::Workflow => f.task_id = value,
    }
    f
}

/// The stored row as the budget it defines, confined to its namespace.
pub fn stored_budget(row: &StoredBudget) -> CoreResult<Budget> {
    let mut budget = definition::from_json(&row.name, &row.definition)?;
    budget.namespace = Some(row.namespace.clone());
    Ok(budget)
}

/// The scope values a budget has a status for: its match, or every value
/// with spend in the period (a budget per agent, consumer or model). A
/// per-workflow budget without a match has none (the ledger does not group
/// by workflow).
fn values(
    store: &dyn MeteringStore,
    budget: &Budget,
    start_us: i64,
    now_us: i64,
) -> CoreResult<Vec<String>> {
    if let Some(m) = &budget.matches {
        return Ok(vec![m.clone()]);
    }
    let period = period_filters(budget, start_us, now_us);
    Ok(match budget.scope {
        Scope::Global => vec![String::new()],
        Scope::Namespace => vec![budget.namespace.clone().unwrap_or_default()],
        Scope::Agent => names(store.distinct("agent_id", &period)?),
        Scope::Consumer => names(store.distinct("consumer_id", &period)?),
        Scope::Model => store
            .aggregate("model", "UTC", &period)?
            .into_iter()
            .filter_map(|a| a.group)
            .collect(),
        Scope::Workflow => Vec::new(),
    })
}

/// Every event of the budget's namespace (all of them for a code budget) in the period.
fn period_filters(budget: &Budget, start_us: i64, end_us: i64) -> Filters {
    Filters {
        namespace: budget.namespace.clone(),
        start_us: (start_us > i64::MIN).then_some(start_us),
        end_us: Some(end_us),
        ..Filters::default()
    }
}

fn names(counted: Vec<(String, u64)>) -> Vec<String> {
    counted.into_iter().map(|(name, _)| name).collect()
}

/// The status of `row` at `now_us`, one entry per scope value.
pub fn status(
    store: &dyn MeteringStore,
    row: &StoredBudget,
    now_us: i64,
) -> CoreResult<Vec<Status>> {
    let budget = stored_budget(row)?;
    let (start, next) = budget.period.bounds(now_us, budget.tz);
    let start = super::catalog::counted_from(start, row.reset_us, now_us);
    let mut out = Vec::new();
    for value in values(store, &budget, start, now_us)? {
        let spent = store
            .summary(&spend_filters(&budget, &value, start, now_us))?
            .cost_nanos
            .unwrap_or(0);
        out.push(Status {
            budget: budget.name.clone(),
            namespace: budget.namespace.clone(),
            scope: budget.scope,
            scope_value: value,
            spent_nanos: spent,
            reserved_nanos: 0,
            limit_nanos: budget.limit_nanos,
            period_start_us: start,
            next_reset_us: next,
            thresholds_crossed: budget
                .thresholds
                .iter()
                .copied()
                .filter(|t| spent as f64 >= t * budget.limit_nanos as f64)
                .collect(),
        });
    }
    Ok(out)
}

/// Spend per day (in the budget's time zone) over the last `days` days,
/// reset or not; days without spend are left out.
pub fn history(
    store: &dyn MeteringStore,
    row: &StoredBudget,
    days: u32,
    now_us: i64,
) -> CoreResult<Vec<(String, u64)>> {
    let budget = stored_budget(row)?;
    let since = now_us.saturating_sub(i64::from(days) * 86_400_000_000);
    let filters = match (&budget.matches, budget.scope) {
        (Some(value), _) => spend_filters(&budget, value, since, now_us),
        (None, Scope::Namespace) => spend_filters(&budget, &row.namespace, since, now_us),
        // Every scope value counts.
        (None, _) => period_filters(&budget, since, now_us),
    };
    Ok(store
        .aggregate("day", &budget.tz_name, &filters)?
        .into_iter()
        .filter_map(|a| Some((a.group?, a.cost_nanos?)))
        .collect())
}
