//! Which agents and consumers were seen when (`usage_presence`): per UTC
//! day × namespace × model (`''` for none), each agent (`kind` 0) and each
//! consumer (`kind` 1) with a 24-bit mask of the day's UTC hours it was
//! seen in. A range or calendar bucket made of whole hours holds an agent
//! exactly when the mask of one of its days meets its hours of that day,
//! so distinct agents and consumers come from one row per agent (or
//! consumer) and day instead of every grouped row (`super::calendar`).
//! The table is created by `super::pairs::MIGRATION`.
//!
//! Kept with the pair totals of `super::pairs` (same transactions, same
//! recounts: a day's masks are rebuilt from its hourly groups).

use crate::ledger::rollup_plan::{day_of, hour_bit};
use hashbrown::HashMap;
use rusqlite::{params, Connection};

/// `kind` of an agent's row.
pub const AGENT: i64 = 0;
/// `kind` of a consumer's row.
pub const CONSUMER: i64 = 1;

/// One day × namespace × model's masks being gathered.
struct DayModel {
    day: i64,
    namespace: String,
    model: String,
    agents: HashMap<String, u32>,
    consumers: HashMap<String, u32>,
}

/// The masks one transaction adds (few days × namespaces × models each).
#[derive(Default)]
pub struct Masks {
    groups: Vec<DayModel>,
    last: usize,
}

impl Masks {
    /// Notes `agent` and `consumer` seen in `hour` with `model` (`''` for none).
    pub fn see(&mut self, hour: i64, namespace: &str, model: &str, agent: &str, consumer: &str) {
        let day = day_of(hour);
        let matches = |g: &DayModel| g.day == day && g.namespace == namespace && g.model == model;
        let i = if self.groups.get(self.last).is_some_and(matches) {
            self.last
        } else if let Some(i) = self.groups.iter().position(matches) {
            i
        } else {
            self.groups.push(DayModel {
                day,
                namespace: namespace.to_owned(),
                model: model.to_owned(),
                agents: HashMap::new(),
                consumers: HashMap::new(),
            });
            self.groups.len() - 1
        };
        self.last = i;
        let bit = hour_bit(hour);
        let group = &mut self.groups[i];
        *group.agents.entry_ref(agent).or_default() |= bit;
        *group.consumers.entry_ref(consumer).or_default() |= bit;
    }

    pub fn clear(&mut self) {
        self.groups.clear();
        self.last = 0;
    }

    /// Adds the masks to `usage_presence` (bits are only ever added).
    pub fn write(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if self.groups.is_empty() {
            return Ok(());
        }
        let mut stmt = conn.prepare_cached(
            "INSERT INTO usage_presence (day, namespace, model, kind, id, hours) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (day, namespace, model, kind, id) DO UPDATE SET hours = hours | excluded.hours",
        )?;
        for g in self.groups.drain(..) {
            for (kind, ids) in [(AGENT, &g.agents), (CONSUMER, &g.consumers)] {
                for (id, &hours) in ids {
                    stmt.execute(params![g.day, g.namespace, g.model, kind, id, hours])?;
                }
            }
        }
        self.last = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::rollup_plan::HOUR_US;

    #[test]
    fn masks_add_the_hours_each_id_was_seen_in_per_day_and_model() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::pairs::MIGRATION).unwrap();
        let day = 20 * crate::ledger::rollup_plan::DAY_US;
        let mut masks = Masks::default();
        masks.see(day, "ns", "m", "a", "c");
        masks.see(day + 3 * HOUR_US, "ns", "m", "a", "d");
        masks.see(day + 3 * HOUR_US, "ns", "", "a", "c");
        masks.write(&conn).unwrap();
        // A later transaction only adds bits.
        masks.see(day + 23 * HOUR_US, "ns", "m", "a", "c");
        masks.see(day - HOUR_US, "ns", "m", "a", "c");
        masks.write(&conn).unwrap();
        let mut stmt = conn
            .prepare("SELECT day, model, kind, id, hours FROM usage_presence ORDER BY 1, 2, 3, 4")
            .unwrap();
        let rows: Vec<(i64, String, i64, String, i64)> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let prev = day - crate::ledger::rollup_plan::DAY_US;
        let row = |d, m: &str, k, id: &str, h| (d, m.to_string(), k, id.to_string(), h);
        assert_eq!(
            rows,
            vec![
                row(prev, "m", AGENT, "a", 1 << 23),
                row(prev, "m", CONSUMER, "c", 1 << 23),
                row(day, "", AGENT, "a", 1 << 3),
                row(day, "", CONSUMER, "c", 1 << 3),
                row(day, "m", AGENT, "a", 1 | 1 << 3 | 1 << 23),
                row(day, "m", CONSUMER, "c", 1 | 1 << 23),
                row(day, "m", CONSUMER, "d", 1 << 3),
            ]
        );
    }
}
