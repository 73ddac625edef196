//! Grouping keys, and calendar buckets in IANA time zones.
//!
//! Time buckets are computed inside SQLite by the `uw_bucket(ts, unit, tz)`
//! SQL function, so aggregation stays in SQL. Today's UTC offsets are
//! multiples of 15 minutes and change only on such boundaries, so the label
//! of a timestamp is fixed within its 15-minute UTC slot: labels are cached
//! per slot and computed once per slot, not once per row. A slot where that
//! does not hold (historic offsets such as Monrovia's −00:44:30) is computed
//! per row.

use crate::error::{CoreError, CoreResult};
use chrono::{
    DateTime, Datelike, Days, LocalResult, Months, NaiveDate, Offset, TimeZone, Timelike,
};
use chrono_tz::Tz;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeUnit {
    Hour,
    Day,
    Week,
    Month,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Agent,
    Consumer,
    Model,
    Action,
    Namespace,
    Time(TimeUnit),
}

impl GroupBy {
    pub const NAMES: [&'static str; 9] = [
        "agent",
        "consumer",
        "model",
        "action",
        "namespace",
        "hour",
        "day",
        "week",
        "month",
    ];

    pub fn parse(name: &str) -> CoreResult<GroupBy> {
        Ok(match name {
            "agent" => GroupBy::Agent,
            "consumer" => GroupBy::Consumer,
            "model" => GroupBy::Model,
            "action" => GroupBy::Action,
            "namespace" => GroupBy::Namespace,
            "hour" => GroupBy::Time(TimeUnit::Hour),
            "day" => GroupBy::Time(TimeUnit::Day),
            "week" => GroupBy::Time(TimeUnit::Week),
            "month" => GroupBy::Time(TimeUnit::Month),
            other => {
                return Err(CoreError::InvalidArgument(
                    "group_by",
                    format!(
                        "must be one of {}, got {other:?}",
                        GroupBy::NAMES.join(", ")
                    ),
                ))
            }
        })
    }

    /// The SQL expression grouped on (a column, or the bucket function with
    /// its unit and zone bound as parameters).
    pub fn sql(&self) -> &'static str {
        match self {
            GroupBy::Agent => "agent_id",
            GroupBy::Consumer => "consumer_id",
            GroupBy::Model => "model",
            GroupBy::Action => "action",
            GroupBy::Namespace => "namespace",
            GroupBy::Time(_) => "uw_bucket(ts, ?, ?)",
        }
    }
}

impl TimeUnit {
    pub fn name(self) -> &'static str {
        match self {
            TimeUnit::Hour => "hour",
            TimeUnit::Day => "day",
            TimeUnit::Week => "week",
            TimeUnit::Month => "month",
        }
    }

    pub fn parse(name: &str) -> Option<TimeUnit> {
        match name {
            "hour" => Some(TimeUnit::Hour),
            "day" => Some(TimeUnit::Day),
            "week" => Some(TimeUnit::Week),
            "month" => Some(TimeUnit::Month),
            _ => None,
        }
    }
}

pub fn parse_tz(name: &str) -> CoreResult<Tz> {
    name.parse::<Tz>().map_err(|_| {
        CoreError::InvalidArgument(
            "tz",
            format!("unknown IANA time zone {name:?} (e.g. \"UTC\", \"Europe/Paris\")"),
        )
    })
}

/// The bucket label of `ts_us` in `tz`: hour `2026-03-08T01:00-05:00`, day
/// `2026-03-08`, ISO week `2026-W10`, month `2026-03`.
pub fn label(ts_us: i64, unit: TimeUnit, tz: Tz) -> String {
    let Some(utc) = DateTime::from_timestamp_micros(ts_us) else {
        return "invalid".into();
    };
    let local = utc.with_timezone(&tz);
    match unit {
        TimeUnit::Hour => local.format("%Y-%m-%dT%H:00%:z").to_string(),
        TimeUnit::Day => local.format("%Y-%m-%d").to_string(),
        TimeUnit::Week => {
            let week = local.iso_week();
            format!("{}-W{:02}", week.year(), week.week())
        }
        TimeUnit::Month => local.format("%Y-%m").to_string(),
    }
}

/// The first instant (UTC µs) of `date` in `tz`: its midnight, or, where a
/// clock change skips midnight, the first local time that exists.
fn first_instant(date: NaiveDate, tz: Tz) -> Option<i64> {
    let mut local = date.and_hms_opt(0, 0, 0)?;
    for _ in 0..(4 * 24) {
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                return Some(t.timestamp_micros())
            }
            LocalResult::None => local += chrono::Duration::minutes(15),
        }
    }
    None
}

/// The UTC range `[start, end)` of the bucket that holds `ts_us`. The caller
/// checks the labels at both ends: where a clock change falls inside a
/// bucket in an unusual way, they differ and it groups row by row instead.
pub fn bucket_bounds(ts_us: i64, unit: TimeUnit, tz: Tz) -> Option<(i64, i64)> {
    let local = DateTime::from_timestamp_micros(ts_us)?.with_timezone(&tz);
    let date = local.date_naive();
    let (first, next) = match unit {
        TimeUnit::Hour => {
            let into_hour = i64::from(local.minute() * 60 + local.second()) * 1_000_000
                + i64::from(local.nanosecond() / 1_000);
            let start = ts_us - into_hour;
            return Some((start, start + 3_600_000_000));
        }
        TimeUnit::Day => (date, date.checked_add_days(Days::new(1))?),
        TimeUnit::Week => {
            let monday =
                date.checked_sub_days(Days::new(u64::from(date.weekday().num_days_from_monday())))?;
            (monday, monday.checked_add_days(Days::new(7))?)
        }
        TimeUnit::Month => {
            let first = date.with_day(1)?;
            (first, first.checked_add_months(Months::new(1))?)
        }
    };
    Some((first_instant(first, tz)?, first_instant(next, tz)?))
}

/// The zone's UTC offset at `ts_us`, in seconds.
pub fn offset_at(ts_us: i64, tz: Tz) -> Option<i32> {
    let utc = DateTime::from_timestamp_micros(ts_us)?.naive_utc();
    Some(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc())
}

/// Whether every instant of `[start, end)` carries the label `here`, given
/// that its two ends do. Only a clock change inside can break that (a
/// fall-back across the bucket's edge, as St. John's at 00:01): the first
/// instant of the new offset and the one before it must carry `here` too.
/// Zones change their offset at most once within a bucket's span of days.
pub fn uniform_between(start: i64, end: i64, unit: TimeUnit, tz: Tz, here: &str) -> bool {
    let (Some(first), Some(last)) = (offset_at(start, tz), offset_at(end - 1, tz)) else {
        return false;
    };
    if first == last {
        return true;
    }
    // The first instant at the last offset: the clock change.
    let (mut before, mut after) = (start, end - 1);
    while after - before > 1 {
        let mid = before + (after - before) / 2;
        if offset_at(mid, tz) == Some(last) {
            after = mid;
        } else {
            before = mid;
        }
    }
    label(after, unit, tz) == here && label(after - 1, unit, tz) == here
}

pub const SLOT_US: i64 = 15 * 60 * 1_000_000;
const CACHE_SLOTS: usize = 4096;

/// A cached slot: its label, or `None` when labels vary within it.
type Slot = (i64, TimeUnit, Tz, Option<String>);

/// Labels cached per 15-minute UTC slot.
pub struct LabelCache {
    entries: Vec<Option<Slot>>,
    scratch: String,
}

impl Default for LabelCache {
    fn default() -> Self {
        LabelCache {
            entries: vec![None; CACHE_SLOTS],
            scratch: String::new(),
        }
    }
}

impl LabelCache {
    pub fn label(&mut self, ts_us: i64, unit: TimeUnit, tz: Tz) -> &str {
        let slot = ts_us.div_euclid(SLOT_US);
        let idx = slot.rem_euclid(CACHE_SLOTS as i64) as usize;
        let hit = matches!(&self.entries[idx], Some((s, u, z, _)) if *s == slot && *u == unit && *z == tz);
        if !hit {
            let start = slot * SLOT_US;
            let cached = slot_is_uniform(start, tz).then(|| label(ts_us, unit, tz));
            self.entries[idx] = Some((slot, unit, tz, cached));
        }
        match &self.entries[idx] {
            Some((_, _, _, Some(label))) => label,
            _ => {
                self.scratch = label(ts_us, unit, tz);
                &self.scratch
            }
        }
    }
}

/// Whether the zone's offset is the same whole number of quarter-hours
/// throughout the 15-minute UTC slot starting at `start` (so that every
/// instant of the slot carries the same label, whatever the unit).
pub fn slot_is_uniform(start: i64, tz: Tz) -> bool {
    quarter_hour_offset(start, tz)
        .zip(quarter_hour_offset(start + SLOT_US - 1, tz))
        .is_some_and(|(a, b)| a == b)
}

/// The zone's UTC offset at `ts_us` in seconds, if it is a whole number of quarter-hours.
fn quarter_hour_offset(ts_us: i64, tz: Tz) -> Option<i32> {
    let utc = DateTime::from_timestamp_micros(ts_us)?.naive_utc();
    let offset = tz.offset_from_utc_datetime(&utc).fix().local_minus_utc();
    (offset % 900 == 0).then_some(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn days_follow_the_zone_across_dst() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 2026-03-08: clocks go forward at 02:00 local (07:00 UTC); the day has 23 hours.
        assert_eq!(
            label(us("2026-03-08T04:59:59Z"), TimeUnit::Day, ny),
            "2026-03-07"
        );
        assert_eq!(
            label(us("2026-03-08T05:00:00Z"), TimeUnit::Day, ny),
            "2026-03-08"
        );
        assert_eq!(
            label(us("2026-03-09T03:59:59Z"), TimeUnit::Day, ny),
            "2026-03-08"
        );
        assert_eq!(
            label(us("2026-03-09T04:00:00Z"), TimeUnit::Day, ny),
            "2026-03-09"
        );
        assert_eq!(
            label(us("2026-03-08T06:30:00Z"), TimeUnit::Hour, ny),
            "2026-03-08T01:00-05:00"
        );
        assert_eq!(
            label(us("2026-03-08T07:30:00Z"), TimeUnit::Hour, ny),
            "2026-03-08T03:00-04:00"
        );
    }

    #[test]
    fn weeks_are_iso_and_months_local() {
        let utc: Tz = "UTC".parse().unwrap();
        assert_eq!(
            label(us("2026-02-14T12:00:00Z"), TimeUnit::Week, utc),
            "2026-W07"
        );
        assert_eq!(
            label(us("2027-01-01T12:00:00Z"), TimeUnit::Week, utc),
            "2026-W53"
        );
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        assert_eq!(
            label(us("2026-01-31T15:00:00Z"), TimeUnit::Month, tokyo),
            "2026-02"
        );
    }

    #[test]
    fn cached_labels_match_direct_ones() {
        let zones: Vec<Tz> = ["Asia/Kathmandu", "America/New_York", "Australia/Lord_Howe"]
            .iter()
            .map(|z| z.parse().unwrap())
            .collect();
        let mut cache = LabelCache::default();
        let start = us("2026-03-01T00:00:00Z");
        for tz in zones {
            for unit in [TimeUnit::Hour, TimeUnit::Day] {
                for i in 0..20_000 {
                    let ts = start + i * 7 * 60 * 1_000_000 + i;
                    assert_eq!(cache.label(ts, unit, tz), label(ts, unit, tz));
                }
            }
        }
    }

    #[test]
    fn historic_offsets_off_the_quarter_hour_are_not_cached_per_slot() {
        let monrovia: Tz = "Africa/Monrovia".parse().unwrap();
        let mut cache = LabelCache::default();
        // 09:55:30 and 10:00:15 local (UTC-00:44:30), in one 15-minute UTC slot.
        let a = us("1970-06-01T10:40:00Z");
        let b = us("1970-06-01T10:44:45Z");
        assert_eq!(
            cache.label(a, TimeUnit::Hour, monrovia),
            label(a, TimeUnit::Hour, monrovia)
        );
        assert_eq!(
            cache.label(b, TimeUnit::Hour, monrovia),
            label(b, TimeUnit::Hour, monrovia)
        );
        assert_ne!(
            label(a, TimeUnit::Hour, monrovia),
            label(b, TimeUnit::Hour, monrovia)
        );
    }

    #[test]
    fn bucket_bounds_follow_the_local_calendar() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let day = bucket_bounds(us("2026-03-08T12:00:00Z"), TimeUnit::Day, ny).unwrap();
        assert_eq!(
            day,
            (us("2026-03-08T05:00:00Z"), us("2026-03-09T04:00:00Z")),
            "a 23-hour day"
        );
        let week = bucket_bounds(us("2026-02-14T12:00:00Z"), TimeUnit::Week, Tz::UTC).unwrap();
        assert_eq!(
            week,
            (us("2026-02-09T00:00:00Z"), us("2026-02-16T00:00:00Z"))
        );
        let month = bucket_bounds(
            us("2026-01-31T15:00:00Z"),
            TimeUnit::Month,
            "Asia/Tokyo".parse().unwrap(),
        );
        assert_eq!(
            month,
            Some((us("2026-01-31T15:00:00Z"), us("2026-02-28T15:00:00Z")))
        );
        let hour = bucket_bounds(us("2026-11-01T06:30:00Z"), TimeUnit::Hour, ny).unwrap();
        assert_eq!(
            hour,
            (us("2026-11-01T06:00:00Z"), us("2026-11-01T07:00:00Z")),
            "the second 01:00"
        );
        // Santiago skips midnight when its clocks go forward.
        let santiago: Tz = "America/Santiago".parse().unwrap();
        let (start, _) =
            bucket_bounds(us("2026-09-06T12:00:00Z"), TimeUnit::Day, santiago).unwrap();
        assert_eq!(label(start, TimeUnit::Day, santiago), "2026-09-06");
        assert_eq!(label(start - 1, TimeUnit::Day, santiago), "2026-09-05");
    }

    #[test]
    fn unknown_names_are_refused() {
        assert!(parse_tz("Mars/Olympus").is_err());
        assert!(GroupBy::parse("year").is_err());
        assert_eq!(
            GroupBy::parse("week").unwrap(),
            GroupBy::Time(TimeUnit::Week)
        );
    }
}
