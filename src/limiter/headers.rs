//! The HTTP rate-limit headers of a decision, for the limit that binds: the
//! draft-11 structured fields `RateLimit-Policy` and `RateLimit`, the older
//! `RateLimit-Limit`/`-Remaining`/`-Reset` (and `X-RateLimit-*`), and
//! `Retry-After` on a refusal. Built here because an HTTP middleware adds
//! them to every response: in Python they cost more than the decision.

use crate::clock::ns_to_seconds;
use crate::limits::LimitSpec;
use crate::usage::{nanos_to_usd, Dimension, Usage};

/// What the headers are built from (the fields of a `Decision`).
pub struct HeaderSource<'a> {
    pub allowed: bool,
    pub retry_after_ns: Option<u64>,
    pub limit: Option<&'a LimitSpec>,
    pub remaining: &'a Usage,
    pub set: HeaderSet,
}

/// Which rate-limit headers a response carries; every set sends
/// `Retry-After` on a refusal. Each header is a few microseconds of a
/// server's time per response, so an API whose clients read one style can
/// send that one alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderSet {
    /// The draft-11 fields, the older `RateLimit-*` and `X-RateLimit-*`.
    All,
    /// `RateLimit-Policy` and `RateLimit` (draft-11 structured fields).
    Draft,
    /// `RateLimit-Limit`/`-Remaining`/`-Reset` and their `X-RateLimit-*` twins.
    Legacy,
    /// `Retry-After` on a refusal only.
    None,
}

impl HeaderSet {
    /// The names `parse` takes, for an error message.
    pub const CHOICES: &'static str = "'all', 'draft', 'legacy' or 'none'";

    pub fn parse(name: &str) -> Option<HeaderSet> {
        match name {
            "all" => Some(HeaderSet::All),
            "draft" => Some(HeaderSet::Draft),
            "legacy" => Some(HeaderSet::Legacy),
            "none" => Some(HeaderSet::None),
            _ => None,
        }
    }

    fn draft(self) -> bool {
        matches!(self, HeaderSet::All | HeaderSet::Draft)
    }

    fn legacy(self) -> bool {
        matches!(self, HeaderSet::All | HeaderSet::Legacy)
    }
}

/// A number of a header: an integer count, or USD for cost.
#[derive(Clone, Copy)]
enum Amount {
    Count(u64),
    Usd(f64),
}

impl Amount {
    fn of(dimension: Dimension, value: u64) -> Amount {
        match dimension {
            Dimension::Cost => Amount::Usd(nanos_to_usd(value)),
            _ => Amount::Count(value),
        }
    }

    /// A count as an integer, USD as Python's `format(x, "g")`.
    fn text(self) -> String {
        match self {
            Amount::Count(n) => n.to_string(),
            Amount::Usd(usd) => format_g(usd),
        }
    }

    /// Draft-11 quotas are integers: cost in millionths of a USD.
    fn quota(self) -> i128 {
        match self {
            Amount::Count(n) => i128::from(n),
            Amount::Usd(usd) => (usd * 1_000_000.0).floor() as i128,
        }
    }
}

/// One rate-limit header; its position in [`Header::ALL`] is its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    Limit,
    XLimit,
    Remaining,
    XRemaining,
    Reset,
    XReset,
    Policy,
    RateLimit,
    RetryAfter,
}

impl Header {
    pub const ALL: [Header; 9] = [
        Header::Limit,
        Header::XLimit,
        Header::Remaining,
        Header::XRemaining,
        Header::Reset,
        Header::XReset,
        Header::Policy,
        Header::RateLimit,
        Header::RetryAfter,
    ];

    /// The name in its usual case.
    pub fn name(self) -> &'static str {
        match self {
            Header::Limit => "RateLimit-Limit",
            Header::XLimit => "X-RateLimit-Limit",
            Header::Remaining => "RateLimit-Remaining",
            Header::XRemaining => "X-RateLimit-Remaining",
            Header::Reset => "RateLimit-Reset",
            Header::XReset => "X-RateLimit-Reset",
            Header::Policy => "RateLimit-Policy",
            Header::RateLimit => "RateLimit",
            Header::RetryAfter => "Retry-After",
        }
    }

    /// The name as ASGI sends it (lower case).
    pub fn lower_name(self) -> &'static str {
        match self {
            Header::Limit => "ratelimit-limit",
            Header::XLimit => "x-ratelimit-limit",
            Header::Remaining => "ratelimit-remaining",
            Header::XRemaining => "x-ratelimit-remaining",
            Header::Reset => "ratelimit-reset",
            Header::XReset => "x-ratelimit-reset",
            Header::Policy => "ratelimit-policy",
            Header::RateLimit => "ratelimit",
            Header::RetryAfter => "retry-after",
        }
    }
}

/// The headers in the order they are sent.
pub fn rate_limit_headers(source: &HeaderSource<'_>) -> Vec<(Header, String)> {
    let mut headers = Vec::with_capacity(9);
    if let Some(limit) = source.limit {
        let window = ns_to_seconds(limit.window_ns());
        let reset = match source.retry_after_ns {
            Some(ns) if !source.allowed => ns_to_seconds(ns),
            _ => window,
        };
        let reset = ceil(reset);
        let amount = Amount::of(limit.dimension, limit.amount);
        let remaining = Amount::of(
            limit.dimension,
            remaining_of(source.remaining, limit.dimension),
        );
        if source.set.legacy() {
            let amount_text = amount.text();
            // A count stays an integer at any size: clients parse these with int().
            let remaining_text = remaining.text();
            let reset_text = reset.to_string();
            headers.push((Header::Limit, amount_text.clone()));
            headers.push((Header::XLimit, amount_text));
            headers.push((Header::Remaining, remaining_text.clone()));
            headers.push((Header::XRemaining, remaining_text));
            headers.push((Header::Reset, reset_text.clone()));
            headers.push((Header::XReset, reset_text));
        }
        if source.set.draft() {
            let name = structured_string(&limit.name());
            let mut policy = format!("{name};q={};w={}", amount.quota(), ceil(window));
            match limit.dimension {
                Dimension::Requests => {}
                Dimension::Cost => policy.push_str(";qu=\"usd-micros\""),
                _ => policy.push_str(";qu=\"tokens\""),
            }
            headers.push((Header::Policy, policy));
            headers.push((
                Header::RateLimit,
                format!("{name};r={};t={reset}", remaining.quota().max(0)),
            ));
        }
    }
    if !source.allowed {
        let wait = match (source.retry_after_ns, source.limit) {
            (Some(ns), _) => ns_to_seconds(ns),
            (None, Some(limit)) => ns_to_seconds(limit.window_ns()),
            (None, None) => 1.0,
        };
        headers.push((Header::RetryAfter, ceil(wait).max(1).to_string()));
    }
    headers
}

/// What is left of `dimension` (a total-token limit is bound by the smaller
/// of the input and output figures).
fn remaining_of(left: &Usage, dimension: Dimension) -> u64 {
    match dimension {
        Dimension::Requests => left.requests,
        Dimension::InputTokens => left.input_tokens,
        Dimension::OutputTokens => left.output_tokens,
        Dimension::TotalTokens => left.input_tokens.min(left.output_tokens),
        Dimension::Cost => left.cost_nanos,
    }
}

fn ceil(seconds: f64) -> i64 {
    seconds.ceil() as i64
}

/// An RFC 8941 structured-field String.
fn structured_string(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `x` as Python's `format(x, "g")` writes it: six significant digits,
/// exponent form below 1e-4 and from 1e6, trailing zeros dropped.
pub fn format_g(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // Rounded to six significant digits first: the exponent is the rounded one's.
    let scientific = format!("{x:.5e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    if (-4..6).contains(&exponent) {
        let decimals = (5 - exponent) as usize;
        trim_zeros(&format!("{x:.decimals$}")).to_string()
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim_zeros(mantissa), exponent.abs())
    }
}

fn trim_zeros(number: &str) -> &str {
    if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        number
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Unit;

    #[test]
    fn each_header_sits_at_its_index() {
        for (i, header) in Header::ALL.iter().enumerate() {
            assert_eq!(*header as usize, i);
            assert_eq!(header.lower_name(), header.name().to_ascii_lowercase());
        }
    }

    #[test]
    fn a_large_count_stays_an_integer() {
        let limit = LimitSpec::new(Dimension::TotalTokens, Unit::Minute, 2_000_000);
        let left = Usage {
            input_tokens: 1_999_900,
            output_tokens: 1_999_900,
            ..Usage::ZERO
        };
        let headers = rate_limit_headers(&HeaderSource {
            allowed: true,
            retry_after_ns: None,
            limit: Some(&limit),
            remaining: &left,
            set: HeaderSet::All,
        });
        assert!(headers.contains(&(Header::Limit, "2000000".into())));
        assert!(headers.contains(&(Header::Remaining, "1999900".into())));
        assert!(headers.contains(&(Header::XRemaining, "1999900".into())));
    }

    /// Python's own output for each value (`format(x, "g")`).
    #[test]
    fn format_g_writes_what_python_writes() {
        for (x, python) in [
            (1.0, "1"),
            (0.5, "0.5"),
            (123456.0, "123456"),
            (1234567.0, "1.23457e+06"),
            (1e6, "1e+06"),
            (999999.5, "1e+06"),
            (999999.4, "999999"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.000123456789, "0.000123457"),
            (9.223_372_036_854_776e18, "9.22337e+18"),
            (2.5, "2.5"),
            (0.1 + 0.2, "0.3"),
            (12.0000001, "12"),
            (-3.75, "-3.75"),
            (1e100, "1e+100"),
            (1.5e-300, "1.5e-300"),
        ] {
            assert_eq!(format_g(x), python, "{x:?}");
        }
    }

    #[test]
    fn a_refusal_carries_retry_after_and_the_reset_of_the_wait() {
        let limit = LimitSpec::new(Dimension::TotalTokens, Unit::Minute, 10_000);
        let left = Usage {
            input_tokens: 300,
            output_tokens: 200,
            ..Usage::ZERO
        };
        let headers = rate_limit_headers(&HeaderSource {
            allowed: false,
            retry_after_ns: Some(1_200_000_000),
            limit: Some(&limit),
            remaining: &left,
            set: HeaderSet::All,
        });
        let get = |name: &'static str| {
            headers
                .iter()
                .find(|(header, _)| header.name() == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("RateLimit-Remaining"), Some("200"));
        assert_eq!(get("RateLimit-Reset"), Some("2"));
        assert_eq!(get("Retry-After"), Some("2"));
        assert_eq!(
            get("RateLimit-Policy"),
            Some("\"total_tokens_per_minute\";q=10000;w=60;qu=\"tokens\"")
        );
        assert_eq!(
            get("RateLimit"),
            Some("\"total_tokens_per_minute\";r=200;t=2")
        );
    }

    #[test]
    fn each_set_sends_its_headers_and_retry_after_on_a_refusal() {
        let limit = LimitSpec::new(Dimension::Requests, Unit::Minute, 10);
        let names = |set: HeaderSet, allowed: bool| -> Vec<Header> {
            rate_limit_headers(&HeaderSource {
                allowed,
                retry_after_ns: (!allowed).then_some(2_000_000_000),
                limit: Some(&limit),
                remaining: &Usage::ZERO,
                set,
            })
            .into_iter()
            .map(|(header, _)| header)
            .collect()
        };
        use Header::*;
        let legacy = vec![Limit, XLimit, Remaining, XRemaining, Reset, XReset];
        assert_eq!(
            names(HeaderSet::All, true),
            [&legacy[..], &[Policy, RateLimit]].concat()
        );
        assert_eq!(names(HeaderSet::Draft, true), vec![Policy, RateLimit]);
        assert_eq!(names(HeaderSet::Legacy, true), legacy);
        assert!(names(HeaderSet::None, true).is_empty());
        assert_eq!(
            names(HeaderSet::Draft, false),
            vec![Policy, RateLimit, RetryAfter]
        );
        assert_eq!(names(HeaderSet::None, false), vec![RetryAfter]);
        for (name, set) in [
            ("all", HeaderSet::All),
            ("draft", HeaderSet::Draft),
            ("legacy", HeaderSet::Legacy),
            ("none", HeaderSet::None),
        ] {
            assert_eq!(HeaderSet::parse(name), Some(set));
        }
        assert_eq!(HeaderSet::parse("All"), None);
    }
}
