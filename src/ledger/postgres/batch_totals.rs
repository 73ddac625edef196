//! The grouped totals one write transaction adds (per hour in
//! `usage_rollup`, per UTC day in `usage_daily`), summed by the writer so
//! that each upsert sends one row per group touched, as column arrays,
//! instead of the server grouping every new event again.
//!
//! Sums saturate at 2**63 - 1 as the SQL totals do: a sum of capped values
//! reaches the cap exactly when the sum of the values does.

use super::grouped::Level;
use crate::ledger::event::UsageEvent;
use hashbrown::HashMap;
use tokio_postgres::types::ToSql;

/// hour (or day), namespace, agent, consumer, model (`''` for none), action.
type Key<'e> = (i64, &'e str, &'e str, &'e str, &'e str, &'e str);

/// events, the seven `COUNTERS` in their order, and the unpriced events.
const SUMS: usize = 9;

#[derive(Default)]
struct Totals {
    sums: [u64; SUMS],
    /// Sum of known costs; `None` while no event of the group has one.
    cost_nanos: Option<u64>,
}

/// The totals of one level (`grouped::HOURLY` or `coarse::DAILY`).
pub struct BatchTotals<'e> {
    period_us: i64,
    groups: HashMap<Key<'e>, Totals>,
}

impl<'e> BatchTotals<'e> {
    pub fn new(period_us: i64) -> BatchTotals<'e> {
        BatchTotals {
            period_us,
            groups: HashMap::new(),
        }
    }

    /// Adds an inserted event with the cost it was stored with.
    pub fn add(&mut self, e: &'e UsageEvent, cost_nanos: Option<u64>) {
        let time = e.timestamp_us - e.timestamp_us.rem_euclid(self.period_us);
        let key = (
            time,
            e.namespace.as_str(),
            e.agent_id.as_str(),
            e.consumer_id.as_str(),
            e.model.as_deref().unwrap_or(""),
            e.action.as_str(),
        );
        let t = self.groups.entry(key).or_default();
        let most = i64::MAX as u64;
        let counted = std::iter::once(1)
            .chain(super::writer::counters(e))
            .chain([u64::from(cost_nanos.is_none())]);
        for (sum, v) in t.sums.iter_mut().zip(counted) {
            *sum = sum.saturating_add(v).min(most);
        }
        if let Some(c) = cost_nanos {
            t.cost_nanos = Some(t.cost_nanos.unwrap_or(0).saturating_add(c).min(most));
        }
    }

    /// The rows as the parameters of `grouped::upsert_rows_sql`: one array
    /// per column, in its column order.
    pub fn columns(&self) -> Columns<'e> {
        let n = self.groups.len();
        let mut c = Columns {
            time: Vec::with_capacity(n),
            keys: std::array::from_fn(|_| Vec::with_capacity(n)),
            sums: std::array::from_fn(|_| Vec::with_capacity(n)),
            cost_nanos: Vec::with_capacity(n),
        };
        for (&(time, namespace, agent, consumer, model, action), t) in &self.groups {
            c.time.push(time);
            for (column, key) in c
                .keys
                .iter_mut()
                .zip([namespace, agent, consumer, model, action])
            {
                column.push(key);
            }
            for (column, &sum) in c.sums.iter_mut().zip(&t.sums) {
                column.push(sum as i64);
            }
            c.cost_nanos.push(t.cost_nanos.map(|v| v as i64));
        }
        c
    }
}

/// A level's rows, column by column.
pub struct Columns<'e> {
    time: Vec<i64>,
    keys: [Vec<&'e str>; 5],
    /// events, the counters, unpriced events (`SUMS` order).
    sums: [Vec<i64>; SUMS],
    cost_nanos: Vec<Option<i64>>,
}

impl Columns<'_> {
    /// In the order `grouped::upsert_rows_sql` numbers its parameters.
    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut out: Vec<&(dyn ToSql + Sync)> = vec![&self.time];
        out.extend(self.keys.iter().map(|k| k as &(dyn ToSql + Sync)));
        out.extend(self.sums[..8].iter().map(|s| s as &(dyn ToSql + Sync)));
        out.push(&self.cost_nanos);
        out.push(&self.sums[8]);
        out
    }
}

/// The period (µs) of a level's time column.
pub fn period_of(level: &Level) -> i64 {
    if level.time == "day" {
        crate::ledger::rollup_plan::DAY_US
    } else {
        crate::ledger::rollup_plan::HOUR_US
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::rollup_plan::HOUR_US;

    fn event(agent: &str, ts: i64, tokens_in: u64) -> UsageEvent {
        UsageEvent {
            model: None,
            ..crate::ledger::event::tests::event(agent, ts, tokens_in)
        }
    }

    #[test]
    fn groups_by_period_and_keys_and_saturates() {
        let events = [
            event("a", 10, 5),
            event("a", HOUR_US - 1, u64::MAX),
            event("a", HOUR_US, 7),
            event("b", -1, 2),
        ];
        let mut totals = BatchTotals::new(HOUR_US);
        totals.add(&events[0], Some(3));
        totals.add(&events[1], None);
        totals.add(&events[2], None);
        totals.add(&events[3], Some(i64::MAX as u64));
        let c = totals.columns();
        let mut rows: Vec<_> = (0..c.time.len())
            .map(|i| {
                (
                    c.time[i],
                    c.keys[1][i],
                    c.sums[0][i],
                    c.sums[1][i],
                    c.cost_nanos[i],
                    c.sums[8][i],
                )
            })
            .collect();
        rows.sort();
        assert_eq!(
            rows,
            vec![
                (-HOUR_US, "b", 1, 2, Some(i64::MAX), 0),
                (0, "a", 2, i64::MAX, Some(3), 1),
                (HOUR_US, "a", 1, 7, None, 1),
            ]
        );
        assert_eq!(c.params().len(), 16);
        assert_eq!(c.keys[3], vec![""; 3]);
    }
}
