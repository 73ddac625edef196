//! Calendar buckets (hour, day, week, month in any IANA zone) and totals
//! per model summed from two small tables, whatever the store: totals per
//! hour × namespace × model, and presence masks (per UTC day × namespace ×
//! model, each agent and consumer with a 24-bit mask of the day's UTC
//! hours it was seen in). A bucket made of whole hours holds an agent
//! exactly when the mask of one of the bucket's days meets the bucket's
//! hours of that day, so distinct agents and consumers per bucket come
//! from one row per agent (or consumer) and day, in any zone.
//!
//! The store reads the rows; this module says which rows the plan needs,
//! puts each row in its bucket, and gives the buckets in the order the
//! query over the events gives them. The partial hours at the range's
//! edges and the hours a bucket edge cuts (zones off the hour) come from
//! the events, as `rollup_plan` splits them, grouped per quarter-hour slot
//! (or model), agent and consumer.

use crate::ledger::buckets::{label, slot_is_uniform, TimeUnit, SLOT_US};
use crate::ledger::filters::Filters;
use crate::ledger::rollup_plan::{day_of, hour_bit, Plan, DAY_US, HOUR_US, MAX_SCANNED_HOURS};
use crate::ledger::sqlite::{add_totals, Aggregate};
use chrono_tz::Tz;
use hashbrown::{HashMap, HashSet};

/// What the totals are grouped by.
#[derive(Clone, Copy)]
pub enum By {
    /// Calendar buckets of this unit in this zone.
    Bucket(TimeUnit, Tz),
    /// The model (no model first, then by bytes).
    Model,
}

/// Whether the tables keep every filter of `filters` (namespace, model, time).
pub fn answers(filters: &Filters) -> bool {
    let kept = Filters {
        namespace: filters.namespace.clone(),
        model: filters.model.clone(),
        start_us: filters.start_us,
        end_us: filters.end_us,
        ..Filters::default()
    };
    kept == *filters && crate::ledger::rollup_plan::answers(filters)
}

/// One bucket being summed: its label, first instant seen, totals and ids.
struct Bucket {
    label: String,
    first: i64,
    totals: Aggregate,
    agents: HashSet<String>,
    consumers: HashSet<String>,
}

/// The index of a bucket whose rows are found by their model.
const BY_MODEL: usize = usize::MAX;

/// The buckets of one read, filled row by row.
pub struct PresenceRead {
    by: By,
    all: Vec<Bucket>,
    by_label: HashMap<String, usize>,
    /// Per UTC day, the buckets' masks of its whole hours in the plan.
    days: HashMap<i64, Vec<(usize, u32)>>,
    bucket_of_hour: HashMap<i64, usize>,
    /// The UTC days whose masks are read, as `[first, past)` day starts.
    pub day_range: (i64, i64),
}

impl PresenceRead {
    /// The read of `plan` (split with the buckets of `by`, or as for UTC
    /// hours for models), or `None` when the tables cannot answer it: no
    /// whole hour, too many hours, or event spans holding a slot whose
    /// two ends differ in offset from UTC.
    pub fn new(by: By, plan: &Plan) -> Option<PresenceRead> {
        let tz = match by {
            By::Bucket(_, tz) => tz,
            By::Model => Tz::UTC,
        };
        let whole: i64 = plan.hours.iter().map(|&(a, b)| (b - a) / HOUR_US).sum();
        if plan.hours.is_empty() || whole > MAX_SCANNED_HOURS || !plan.days.is_empty() {
            return None;
        }
        // The slots read from the events: each checked below, so a read
        // whose event spans hold too many of them (an unbounded range) is
        // left to the general grouping rather than checked slot by slot.
        let slots: i64 = plan
            .events
            .iter()
            .map(|&(a, b)| (b - (a - a.rem_euclid(SLOT_US))) / SLOT_US + 1)
            .fold(0i64, i64::saturating_add);
        if slots > MAX_SCANNED_HOURS * (HOUR_US / SLOT_US) {
            return None;
        }
        let uniform = plan.events.iter().all(|&(a, b)| {
            let first = a - a.rem_euclid(SLOT_US);
            (first..=b)
                .step_by(SLOT_US as usize)
                .all(|slot| slot_is_uniform(slot, tz))
        });
        if !uniform {
            return None;
        }
        let mut read = PresenceRead {
            by,
            all: Vec::new(),
            by_label: HashMap::new(),
            days: HashMap::new(),
            bucket_of_hour: HashMap::new(),
            day_range: (
                day_of(plan.hours[0].0),
                day_of(plan.hours[plan.hours.len() - 1].1 - 1) + DAY_US,
            ),
        };
        for &(a, b) in &plan.hours {
            for h in (a..b).step_by(HOUR_US as usize) {
                let i = match by {
                    By::Bucket(unit, tz) => read.of(label(h, unit, tz), h),
                    By::Model => BY_MODEL,
                };
                read.bucket_of_hour.insert(h, i);
                let bit = hour_bit(h);
                let masks = read.days.entry(day_of(h)).or_default();
                match masks.iter_mut().find(|(j, _)| *j == i) {
                    Some((_, mask)) => *mask |= bit,
                    None => masks.push((i, bit)),
                }
            }
        }
        Some(read)
    }

    fn of(&mut self, label: String, at: i64) -> usize {
        let i = match self.by_label.get(label.as_str()) {
            Some(&i) => i,
            None => {
                self.by_label.insert(label.clone(), self.all.len());
                self.all.push(Bucket {
                    label,
                    first: at,
                    totals: Aggregate::default(),
                    agents: HashSet::new(),
                    consumers: HashSet::new(),
                });
                self.all.len() - 1
            }
        };
        self.all[i].first = self.all[i].first.min(at);
        i
    }

    /// The column the per-model hours are summed by: the hour for buckets,
    /// the model for models.
    pub fn hourly_key(&self) -> &'static str {
        match self.by {
            By::Bucket(..) => "hour",
            By::Model => "model",
        }
    }

    /// Adds the totals of one whole hour (buckets) of the plan.
    pub fn add_hour(&mut self, hour: i64, totals: &Aggregate) {
        if let Some(&i) = self.bucket_of_hour.get(&hour) {
            add_totals(&mut self.all[i].totals, totals);
        }
    }

    /// Adds the totals of one model (`''` for none) over the plan's whole hours.
    pub fn add_model(&mut self, model: &str, totals: &Aggregate) {
        let i = self.of(model.to_owned(), 0);
        add_totals(&mut self.all[i].totals, totals);
    }

    /// Adds a presence row of `day_range`: an agent (`agent`) or consumer
    /// seen with `model` in the UTC hours `hours` of `day`.
    pub fn add_presence(&mut self, day: i64, agent: bool, id: &str, hours: u32, model: &str) {
        let Some(masks) = self.days.get(&day) else {
            return;
        };
        let mut hit = Vec::new();
        for &(i, mask) in masks {
            if hours & mask != 0 {
                hit.push(i);
            }
        }
        for i in hit {
            let i = match i {
                BY_MODEL => self.of(model.to_owned(), 0),
                i => i,
            };
            let bucket = &mut self.all[i];
            let set = if agent {
                &mut bucket.agents
            } else {
                &mut bucket.consumers
            };
            if !set.contains(id) {
                set.insert(id.to_owned());
            }
        }
    }

    /// The key the events of the plan's event spans are grouped by (with
    /// agent and consumer): the quarter-hour slot of `ts` for buckets (SQL
    /// of the store), the model (`''` for none) for models.
    pub fn event_key(&self, slot_of_ts: &str) -> String {
        match self.by {
            By::Bucket(..) => slot_of_ts.to_string(),
            By::Model => "COALESCE(model, '')".into(),
        }
    }

    /// Adds one group of events: its key's model (for models), its oldest
    /// timestamp, totals, agent and consumer.
    pub fn add_events(
        &mut self,
        model: Option<&str>,
        first: i64,
        totals: &Aggregate,
        agent: &str,
        consumer: &str,
    ) {
        let i = match self.by {
            By::Bucket(unit, tz) => self.of(label(first, unit, tz), first),
            By::Model => self.of(model.unwrap_or_default().to_owned(), 0),
        };
        let bucket = &mut self.all[i];
        add_totals(&mut bucket.totals, totals);
        if !bucket.agents.contains(agent) {
            bucket.agents.insert(agent.to_owned());
        }
        if !bucket.consumers.contains(consumer) {
            bucket.consumers.insert(consumer.to_owned());
        }
    }

    /// The buckets holding events: oldest first, or models with no model
    /// first, then by bytes.
    pub fn finish(self) -> Vec<Aggregate> {
        let by = self.by;
        let mut out: Vec<Bucket> = self
            .all
            .into_iter()
            .filter(|b| b.totals.events > 0)
            .collect();
        match by {
            By::Bucket(..) => out.sort_by_key(|b| b.first),
            // A model is never empty: `''` is how the tables store none.
            By::Model => out.sort_by(|a, b| a.label.cmp(&b.label)),
        }
        out.into_iter()
            .map(|b| Aggregate {
                group: Some(b.label).filter(|l| !matches!(by, By::Model) || !l.is_empty()),
                unique_agents: b.agents.len() as u64,
                unique_consumers: b.consumers.len() as u64,
                ..b.totals
            })
            .collect()
    }
}
