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

use crate::ledger::rollup_plan::{day_of, HOUR_US};
use hashbrown::HashMap;
use rusqlite::{params, Connection};

/// `kind` of an agent's row.
pub const AGENT: i64 = 0;
/// `kind` of a consumer's row.
pub const CONSUMER: i64 = 1;


/// The bit of `hour` (a UTC hour start) in its day's mask.
pub fn hour_bit(hour: i64) -> u32 {
    1 << ((hour - day_of(hour)) / HOUR_US)
}

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
