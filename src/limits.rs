//! Limit specifications: an amount of one dimension per window.

use crate::error::{CoreError, CoreResult};
use crate::usage::Dimension;
use serde::{Deserialize, Serialize};

/// The window units a limit may be expressed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

impl Unit {
    pub const ALL: [Unit; 4] = [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day];

    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
        }
    }

    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
        }
    }

    pub fn window_ns(self) -> u64 {
        self.seconds() * 1_000_000_000
    }
}

/// Where a limit comes from: the limits given to a limiter, or what a
/// provider told it (a pause after a 429, or its remaining-quota headers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LimitOrigin {
    #[default]
    Configured,
    /// `pause(key, seconds)`: nothing is admitted until it ends.
    Pause,
    /// `observe(key, remaining_*=...)`: at most `amount` more until the reset.
    Observed,
}

/// One limit: at most `amount` of `dimension` in any window of one `unit`.
/// Cost amounts are in nano-USD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LimitSpec {
    pub dimension: Dimension,
    pub unit: Unit,
    pub amount: u64,
    #[serde(default)]
    pub origin: LimitOrigin,
}

impl LimitSpec {
    /// A configured limit of `amount` of `dimension` per `unit`.
    pub fn new(dimension: Dimension, unit: Unit, amount: u64) -> LimitSpec {
        LimitSpec {
            dimension,
            unit,
            amount,
            origin: LimitOrigin::Configured,
        }
    }

    /// The keyword this limit is written as, e.g. `total_tokens_per_minute`;
    /// `pause` for a pause, `observed_{dimension}` for a provider's figure.
    pub fn name(&self) -> String {
        match self.origin {
            LimitOrigin::Configured => {
                format!("{}_per_{}", self.dimension.name(), self.unit.name())
            }
            LimitOrigin::Pause => "pause".into(),
            LimitOrigin::Observed => format!("observed_{}", self.dimension.name()),
        }
    }

    pub fn window_ns(&self) -> u64 {
        self.unit.window_ns()
    }

    /// Parses a keyword such as `requests_per_day`.
    pub fn parse_name(name: &str) -> Option<(Dimension, Unit)> {
        let (dim, unit) = name.rsplit_once("_per_")?;
        let dim = Dimension::from_name(dim)?;
        let unit = Unit::ALL.into_iter().find(|u| u.name() == unit)?;
        Some((dim, unit))
    }

    /// Every accepted keyword, for error messages.
    pub fn valid_names() -> Vec<String> {
        let mut names = Vec::new();
        for dim in Dimension::ALL {
            for unit in Unit::ALL {
                names.push(format!("{}_per_{}", dim.name(), unit.name()));
            }
        }
        names
    }
}

/// A validated set of limits, with the distinct windows they need.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Limits {
    specs: Vec<LimitSpec>,
    /// Distinct window lengths in ns, shortest first.
    windows: Vec<u64>,
    /// For each spec, the index of its window in `windows`.
    spec_window: Vec<usize>,
}

impl Limits {
    pub fn new(mut specs: Vec<LimitSpec>) -> CoreResult<Limits> {
        specs.sort_by_key(|s| (s.unit, s.dimension.name()));
        for pair in specs.windows(2) {
            if pair[0].unit == pair[1].unit && pair[0].dimension == pair[1].dimension {
                return Err(CoreError::InvalidArgument(
                    "limits",
                    format!("{} is given twice", pair[0].name()),
                ));
            }
        }
        if let Some(spec) = specs.iter().find(|s| s.amount == 0) {
            return Err(CoreError::InvalidArgument(
                "limits",
                format!("{} must be positive", spec.name()),
            ));
        }
        let mut windows: Vec<u64> = specs.iter().map(LimitSpec::window_ns).collect();
        windows.dedup();
        let spec_window = specs
            .iter()
            .map(|s| {
                windows
                    .iter()
                    .position(|w| *w == s.window_ns())
                    .unwrap_or(0)
            })
            .collect();
        Ok(Limits {
            specs,
            windows,
            spec_window,
        })
    }

    pub fn specs(&self) -> &[LimitSpec] {
        &self.specs
    }

    pub fn windows(&self) -> &[u64] {
        &self.windows
    }

    /// `(spec, index of its window)` pairs.
    pub fn specs_with_window(&self) -> impl Iterator<Item = (&LimitSpec, usize)> {
        self.specs.iter().zip(self.spec_window.iter().copied())
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dimension: Dimension, unit: Unit, amount: u64) -> LimitSpec {
        LimitSpec::new(dimension, unit, amount)
    }

    #[test]
    fn names_parse_both_ways() {
        assert_eq!(
            LimitSpec::parse_name("total_tokens_per_minute"),
            Some((Dimension::TotalTokens, Unit::Minute))
        );
        assert_eq!(LimitSpec::parse_name("tokens_per_minute"), None);
        assert_eq!(LimitSpec::parse_name("requests_per_week"), None);
        assert_eq!(spec(Dimension::Cost, Unit::Day, 1).name(), "cost_per_day");
        assert_eq!(LimitSpec::valid_names().len(), 20);
    }

    #[test]
    fn distinct_windows_are_shared_by_specs() {
        let limits = Limits::new(vec![
            spec(Dimension::Requests, Unit::Day, 10_000),
            spec(Dimension::Requests, Unit::Minute, 500),
            spec(Dimension::TotalTokens, Unit::Minute, 90_000),
        ])
        .unwrap();
        assert_eq!(limits.windows(), &[60_000_000_000, 86_400_000_000_000]);
        let windows: Vec<usize> = limits.specs_with_window().map(|(_, w)| w).collect();
        assert_eq!(windows, vec![0, 0, 1]);
    }

    #[test]
    fn duplicates_and_zero_amounts_are_refused() {
        let dup = Limits::new(vec![
            spec(Dimension::Requests, Unit::Minute, 1),
            spec(Dimension::Requests, Unit::Minute, 2),
        ]);
        assert!(matches!(dup, Err(CoreError::InvalidArgument("limits", m)) if m.contains("twice")));
        let zero = Limits::new(vec![spec(Dimension::Requests, Unit::Minute, 0)]);
        assert!(zero.is_err());
    }
}
