//! The usage vector: what one action consumes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Nano-USD per USD: money is integer nano-USD inside so sums are exact.
pub const NANOS_PER_USD: f64 = 1e9;

/// Largest count accepted anywhere: counts must fit a signed 64-bit integer
/// so that every store (SQLite, PostgreSQL) can hold them.
pub const MAX_COUNT: u64 = i64::MAX as u64;

/// Requests, tokens and cost consumed by one or more actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_nanos: u64,
}

/// A dimension a limit can be placed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dimension {
    Requests,
    InputTokens,
    OutputTokens,
    TotalTokens,
    Cost,
}

impl Dimension {
    pub const ALL: [Dimension; 5] = [
        Dimension::Requests,
        Dimension::InputTokens,
        Dimension::OutputTokens,
        Dimension::TotalTokens,
        Dimension::Cost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::InputTokens => "input_tokens",
            Dimension::OutputTokens => "output_tokens",
            Dimension::TotalTokens => "total_tokens",
            Dimension::Cost => "cost",
        }
    }

    pub fn from_name(name: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl Usage {
    pub const ZERO: Usage = Usage {
        requests: 0,
        input_tokens: 0,
        output_tokens: 0,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        cost_nanos: 0,
    };

    /// Field names in the order of [`Usage::to_array`].
    pub const FIELDS: [&'static str; 6] = [
        "requests",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost",
    ];

    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// The amount of `dim` in this usage.
    pub fn get(&self, dim: Dimension) -> u64 {
        match dim {
            Dimension::Requests => self.requests,
            Dimension::InputTokens => self.input_tokens,
            Dimension::OutputTokens => self.output_tokens,
            Dimension::TotalTokens => self.total_tokens(),
            Dimension::Cost => self.cost_nanos,
        }
    }

    pub fn to_array(self) -> [u64; 6] {
        [
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.cost_nanos,
        ]
    }

    pub fn from_array(a: [u64; 6]) -> Usage {
        Usage {
            requests: a[0],
            input_tokens: a[1],
            output_tokens: a[2],
            cache_read_tokens: a[3],
            cache_write_tokens: a[4],
            cost_nanos: a[5],
        }
    }

    fn zip(self, other: Usage, f: impl Fn(u64, u64) -> u64) -> Usage {
        let (a, b) = (self.to_array(), other.to_array());
        Usage::from_array(std::array::from_fn(|i| f(a[i], b[i])))
    }

    /// Field-wise sum, saturating at `u64::MAX` (never wraps).
    pub fn saturating_add(self, other: Usage) -> Usage {
        self.zip(other, u64::saturating_add)
    }

    /// Field-wise difference, flooring at zero.
    pub fn saturating_sub(self, other: Usage) -> Usage {
        self.zip(other, u64::saturating_sub)
    }

    /// Field-wise sum; `None` if any field would pass [`MAX_COUNT`].
    pub fn checked_add(self, other: Usage) -> Option<Usage> {
        let (a, b) = (self.to_array(), other.to_array());
        let mut out = [0u64; 6];
        for i in 0..6 {
            out[i] = a[i].checked_add(b[i]).filter(|v| *v <= MAX_COUNT)?;
        }
        Some(Usage::from_array(out))
    }

    /// Field-wise difference; `Err(field name)` for the first field that would go negative.
    pub fn checked_sub(self, other: Usage) -> Result<Usage, &'static str> {
        let (a, b) = (self.to_array(), other.to_array());
        let mut out = [0u64; 6];
        for i in 0..6 {
            out[i] = a[i].checked_sub(b[i]).ok_or(Usage::FIELDS[i])?;
        }
        Ok(Usage::from_array(out))
    }

    /// Field-wise minimum.
    pub fn min(self, other: Usage) -> Usage {
        self.zip(other, u64::min)
    }

    /// Field-wise maximum.
    pub fn max(self, other: Usage) -> Usage {
        self.zip(other, u64::max)
    }

    pub fn is_zero(&self) -> bool {
        *self == Usage::ZERO
    }

    pub fn cost_usd(&self) -> f64 {
        nanos_to_usd(self.cost_nanos)
    }
}

/// USD as a float to integer nano-USD; `None` for NaN, infinite, negative or oversized amounts.
pub fn usd_to_nanos(usd: f64) -> Option<u64> {
    if !usd.is_finite() || usd < 0.0 {
        return None;
    }
    let nanos = (usd * NANOS_PER_USD).round();
    // MAX_COUNT as f64 rounds up to 2**63, which is itself out of range.
    if nanos >= MAX_COUNT as f64 {
        return None;
    }
    Some(nanos as u64)
}

pub fn nanos_to_usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Usage(requests={}, input_tokens={}, output_tokens={}, cache_read_tokens={}, cache_write_tokens={}, cost={:?})",
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            nanos_to_usd(self.cost_nanos)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(requests: u64, input: u64, output: u64, cost: u64) -> Usage {
        Usage {
            requests,
            input_tokens: input,
            output_tokens: output,
            cost_nanos: cost,
            ..Usage::ZERO
        }
    }

    #[test]
    fn total_tokens_is_input_plus_output() {
        let usage = Usage {
            cache_read_tokens: 7,
            ..u(1, 10, 5, 0)
        };
        assert_eq!(usage.total_tokens(), 15);
        assert_eq!(usage.get(Dimension::TotalTokens), 15);
    }

    #[test]
    fn checked_sub_names_the_field_that_goes_negative() {
        assert_eq!(
            u(1, 1, 0, 0).checked_sub(u(1, 2, 0, 0)),
            Err("input_tokens")
        );
        assert_eq!(u(2, 3, 4, 5).checked_sub(u(1, 1, 1, 1)), Ok(u(1, 2, 3, 4)));
    }

    #[test]
    fn checked_add_refuses_to_pass_max_count() {
        assert!(u(MAX_COUNT, 0, 0, 0).checked_add(u(1, 0, 0, 0)).is_none());
        assert_eq!(
            u(1, 2, 3, 4).checked_add(u(1, 1, 1, 1)),
            Some(u(2, 3, 4, 5))
        );
    }

    #[test]
    fn usd_round_trips_through_nanos() {
        assert_eq!(usd_to_nanos(0.000_001_5), Some(1_500));
        assert_eq!(usd_to_nanos(-0.1), None);
        assert_eq!(usd_to_nanos(f64::NAN), None);
        assert_eq!(usd_to_nanos(f64::INFINITY), None);
        assert_eq!(usd_to_nanos(1e30), None);
        assert_eq!(nanos_to_usd(2_500_000_000), 2.5);
    }
}
