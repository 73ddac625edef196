//! Which part of a time range the pre-aggregated hours and days answer, and
//! which part must be read from the events themselves.
//!
//! The totals are kept per UTC hour, and per UTC day. A range is read as its
//! whole hours from the totals and its partial hours at either end from the
//! events; grouped reads (no calendar buckets) take the whole UTC days among
//! those hours from the daily totals, ~24 times fewer rows.
//! Calendar buckets in a zone whose bucket edges are not on the UTC hour
//! (Kathmandu's +05:45, Chatham's +12:45, Lord Howe's half-hour DST,
//! Monrovia's −00:44:30 of 1970) cut some hours in two: those hours are read
//! from the events too, so that each row of totals lies in one bucket.

use crate::ledger::buckets::{label, offset_at, TimeUnit};
use crate::ledger::filters::Filters;
use chrono_tz::Tz;

pub const HOUR_US: i64 = 3_600_000_000;
pub const DAY_US: i64 = 24 * HOUR_US;

/// The start (UTC µs) of the hour holding `ts_us`.
pub fn hour_of(ts_us: i64) -> i64 {
    ts_us - ts_us.rem_euclid(HOUR_US)
}

/// The start (UTC µs) of the UTC day holding `ts_us`.
pub fn day_of(ts_us: i64) -> i64 {
    ts_us - ts_us.rem_euclid(DAY_US)
}

/// Whether the grouped totals can answer `filters`: they keep every
/// filtered column but the task. An empty model is how the totals store
/// "no model", which a filter on `""` must not select.
pub fn answers(filters: &Filters) -> bool {
    filters.task_id.is_none() && filters.model.as_deref() != Some("")
}

/// The key columns a grouped read needs from the pre-aggregated totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// Every key column.
    All,
    /// Namespace, agent and consumer: model and action may be NULL, so the
    /// totals per agent × consumer can be read where they keep the filters.
    Pairs,
}

impl Keys {
    /// Whether a read needing these keys is answered by the totals per
    /// agent × consumer (both stores keep them alike): they keep every
    /// filter but a model, an action or a task.
    pub fn reads_pairs(self, filters: &Filters) -> bool {
        self == Keys::Pairs
            && filters.model.is_none()
            && filters.action.is_none()
            && filters.task_id.is_none()
    }
}

/// The bit of `hour` (a UTC hour start) in its UTC day's 24-bit presence mask.
pub fn hour_bit(hour: i64) -> u32 {
    1 << ((hour - day_of(hour)) / HOUR_US)
}

/// A time range split for reading.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// UTC days read from the daily totals, as `[first, past)` day starts.
    pub days: Vec<(i64, i64)>,
    /// Hours read from the totals, as `[first, past)` hour starts.
    pub hours: Vec<(i64, i64)>,
    /// Timestamps read from the events, as inclusive `[start, end]`.
    pub events: Vec<(i64, i64)>,
}

/// Past this many pieces a read is cheaper over the events alone (every
/// hour cut, as hourly buckets in a +05:45 zone are).
const MAX_PIECES: usize = 128;

/// Past this many hours a range's cut hours are looked for only among the
/// hours that hold events (`plan_among`), not hour by hour.
pub const MAX_SCANNED_HOURS: i64 = 20_000;

/// Splits `start..=end`. With `buckets`, the hours that a bucket edge cuts
/// are read from the events. `None` when the pieces would be too many.
pub fn plan(start: i64, end: i64, buckets: Option<(TimeUnit, Tz)>) -> Option<Plan> {
    let (first, past) = whole_hours(start, end);
    let cut = match buckets {
        Some((unit, tz)) if first < past => {
            let hours = (first..past).step_by(HOUR_US as usize);
            cut_hours(hours, unit, tz)?
        }
        _ => Vec::new(),
    };
    Some(split(start, end, &cut))
}

/// `plan` without buckets, with the whole UTC days among its whole hours
/// read from the daily totals.
pub fn plan_with_days(start: i64, end: i64) -> Plan {
    let mut plan = split(start, end, &[]);
    if let [(first, past)] = plan.hours[..] {
        let (day_first, day_past) = (day_of(first.saturating_add(DAY_US - 1)), day_of(past));
        if day_first < day_past {
            plan.days.push((day_first, day_past));
            plan.hours.clear();
            if first < day_first {
                plan.hours.push((first, day_first));
            }
            if day_past < past {
                plan.hours.push((day_past, past));
            }
        }
    }
    plan
}

/// `plan` for a range whose events lie only in the hours `occupied`
/// (ascending): only those are checked for a bucket edge.
pub fn plan_among(start: i64, end: i64, unit: TimeUnit, tz: Tz, occupied: &[i64]) -> Option<Plan> {
    let (first, past) = whole_hours(start, end);
    let inside = occupied
        .iter()
        .copied()
        .filter(|h| (first..past).contains(h));
    Some(split(start, end, &cut_hours(inside, unit, tz)?))
}

/// The whole hours of `start..=end`, as `[first, past)` hour starts.
pub fn whole_hours(start: i64, end: i64) -> (i64, i64) {
    (
        hour_of(start.saturating_add(HOUR_US - 1)),
        hour_of(end.saturating_add(1)),
    )
}

/// The hours among `hours` that a bucket edge cuts; `None` past `MAX_PIECES`.
fn cut_hours(hours: impl Iterator<Item = i64>, unit: TimeUnit, tz: Tz) -> Option<Vec<i64>> {
    let mut cut = Vec::new();
    for h in hours {
        if is_cut(h, unit, tz) {
            cut.push(h);
            if cut.len() > MAX_PIECES {
                return None;
            }
        }
    }
    Some(cut)
}

/// The range as whole hours (but the `cut` ones, ascending) and events.
fn split(start: i64, end: i64, cut: &[i64]) -> Plan {
    let mut plan = Plan::default();
    let (first, past) = whole_hours(start, end);
    if past <= first {
        plan.events.push((start, end));
        return plan;
    }
    if start < first {
        plan.events.push((start, first - 1));
    }
    let mut run = first;
    for &h in cut {
        if run < h {
            plan.hours.push((run, h));
        }
        push_events(&mut plan.events, h, h + HOUR_US - 1);
        run = h + HOUR_US;
    }
    if run < past {
        plan.hours.push((run, past));
    }
    if past <= end {
        push_events(&mut plan.events, past, end);
    }
    plan
}

/// Adds `[start, end]`, merged with the previous range when they touch.
fn push_events(events: &mut Vec<(i64, i64)>, start: i64, end: i64) {
    match events.last_mut() {
        Some(last) if last.1 + 1 == start => last.1 = end,
        _ => events.push((start, end)),
    }
}

/// Whether the hour starting at `h` holds more than one bucket of `unit`.
/// Without a clock change inside it (offsets equal at both ends; zones
/// change at most once an hour), a whole-hour offset puts every local
/// midnight and hour on a UTC hour, so it is whole; any other offset puts
/// a bucket edge in it exactly when its two ends carry different labels.
fn is_cut(h: i64, unit: TimeUnit, tz: Tz) -> bool {
    let last = h + HOUR_US - 1;
    match (offset_at(h, tz), offset_at(last, tz)) {
        (Some(a), Some(b)) if a == b => {
            a % 3600 != 0 && label(h, unit, tz) != label(last, unit, tz)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::buckets::parse_tz;

    fn us(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_micros()
    }

    /// Every timestamp of the range is read exactly once, from one source.
    fn covers(plan: &Plan, start: i64, end: i64) {
        let mut pieces: Vec<(i64, i64)> = plan
            .days
            .iter()
            .chain(&plan.hours)
            .map(|&(a, b)| (a, b - 1))
            .chain(plan.events.iter().copied())
            .collect();
        pieces.sort();
        let mut next = start;
        for (a, b) in pieces {
            assert_eq!(a, next, "{plan:?}");
            assert!(b >= a);
            next = b + 1;
        }
        assert_eq!(next, end + 1, "{plan:?}");
    }

    #[test]
    fn whole_hours_inside_partial_hours_at_the_ends() {
        let start = us("2026-03-01T00:20:00Z");
        let end = us("2026-03-01T05:10:00Z");
        let plan = plan(start, end, None).unwrap();
        assert_eq!(
            plan.hours,
            vec![(us("2026-03-01T01:00:00Z"), us("2026-03-01T05:00:00Z"))]
        );
        assert_eq!(plan.events.len(), 2);
        covers(&plan, start, end);
        let short = super::plan(start, start + 1_000, None).unwrap();
        assert!(short.hours.is_empty());
        covers(&short, start, start + 1_000);
    }

    #[test]
    fn bucket_edges_off_the_hour_are_read_from_the_events() {
        let start = us("2026-06-01T00:00:00Z");
        let end = us("2026-06-05T00:00:00Z") - 1;
        for zone in ["Asia/Kathmandu", "Pacific/Chatham", "Australia/Lord_Howe"] {
            let tz = parse_tz(zone).unwrap();
            let plan = plan(start, end, Some((TimeUnit::Day, tz))).unwrap();
            covers(&plan, start, end);
            assert_eq!(plan.events.len(), 4, "{zone}: one cut hour a day");
            for &(a, b) in &plan.events {
                assert_ne!(label(a, TimeUnit::Day, tz), label(b, TimeUnit::Day, tz));
            }
            for &(a, b) in &plan.hours {
                let mut h = a;
                while h < b {
                    assert_eq!(
                        label(h, TimeUnit::Day, tz),
                        label(h + HOUR_US - 1, TimeUnit::Day, tz)
                    );
                    h += HOUR_US;
                }
            }
        }
        let paris = parse_tz("Europe/Paris").unwrap();
        let whole = plan(start, end, Some((TimeUnit::Day, paris))).unwrap();
        assert_eq!(whole.hours, vec![(start, end + 1)]);
        assert!(whole.events.is_empty());
        let kathmandu = parse_tz("Asia/Kathmandu").unwrap();
        let hourly = plan(start, end, Some((TimeUnit::Hour, kathmandu))).unwrap();
        assert!(hourly.hours.is_empty(), "every hour is cut");
        covers(&hourly, start, end);
    }

    #[test]
    fn odd_historic_offsets_and_clock_changes_cut_their_hours() {
        let monrovia = parse_tz("Africa/Monrovia").unwrap();
        let start = us("1970-06-01T00:00:00Z");
        let end = us("1970-06-03T00:00:00Z") - 1;
        let plan1 = plan(start, end, Some((TimeUnit::Day, monrovia))).unwrap();
        covers(&plan1, start, end);
        assert_eq!(plan1.events.len(), 2);
        // Lord Howe falls back half an hour: the hour of the change is cut.
        let lord_howe = parse_tz("Australia/Lord_Howe").unwrap();
        let change = us("2026-04-04T15:00:00Z");
        assert!(
            is_cut(change - HOUR_US, TimeUnit::Hour, lord_howe)
                || is_cut(change, TimeUnit::Hour, lord_howe)
        );
        let ny = parse_tz("America/New_York").unwrap();
        assert!(!is_cut(us("2026-03-08T07:00:00Z"), TimeUnit::Day, ny));
    }

    #[test]
    fn whole_utc_days_come_from_the_daily_totals_the_hours_around_them_from_the_hourly() {
        let start = us("2026-03-01T05:20:00Z");
        let end = us("2026-03-04T07:10:00Z");
        let plan = plan_with_days(start, end);
        covers(&plan, start, end);
        assert_eq!(
            plan.days,
            vec![(us("2026-03-02T00:00:00Z"), us("2026-03-04T00:00:00Z"))]
        );
        assert_eq!(
            plan.hours,
            vec![
                (us("2026-03-01T06:00:00Z"), us("2026-03-02T00:00:00Z")),
                (us("2026-03-04T00:00:00Z"), us("2026-03-04T07:00:00Z")),
            ]
        );
        assert_eq!(plan.events.len(), 2);
        // Exactly whole days: days only.
        let (a, b) = (us("2026-03-01T00:00:00Z"), us("2026-03-31T00:00:00Z"));
        let whole = plan_with_days(a, b - 1);
        assert_eq!(whole.days, vec![(a, b)]);
        assert!(whole.hours.is_empty() && whole.events.is_empty());
        // Less than a day of whole hours: no days.
        let short = plan_with_days(start, start + 20 * HOUR_US);
        assert!(short.days.is_empty());
        assert_eq!(
            short,
            super::plan(start, start + 20 * HOUR_US, None).unwrap()
        );
        covers(&short, start, start + 20 * HOUR_US);
        // Unbounded: every day of the years 1 to 9999, and days before 1970.
        use crate::ledger::event::{MAX_TIMESTAMP_US, MIN_TIMESTAMP_US};
        let all = plan_with_days(MIN_TIMESTAMP_US, MAX_TIMESTAMP_US);
        covers(&all, MIN_TIMESTAMP_US, MAX_TIMESTAMP_US);
        assert_eq!(all.days.len(), 1);
        assert_eq!(
            day_of(us("1969-12-31T23:59:59Z")),
            us("1969-12-31T00:00:00Z")
        );
    }
}
