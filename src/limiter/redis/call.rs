//! One call of the limiter script: its arguments and its reply.
//! The layout is documented at the top of `limiter.lua`.

use super::super::holds::{pause_spec, Observation};
use super::script::LimiterScript;
use crate::limits::{LimitOrigin, LimitSpec, Limits, Unit};
use crate::usage::{Dimension, Usage, MAX_COUNT};
use redis::Cmd;
use smallvec::SmallVec;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Acquire,
    Check,
    Adjust,
    Remaining,
    Usage,
    Reset,
    Pause,
    Observe,
    /// Admits like `Acquire`, and grants each key a slice to admit from locally.
    Lease,
    /// Gives back the unused part of a slice (to observed ceilings too).
    Return,
    /// A waiter's attempt: admitted at the head of every queue, else queued.
    Wait,
    /// A waiter gives up its tickets.
    Leave,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Acquire => "acquire",
            Op::Check => "check",
            Op::Adjust => "adjust",
            Op::Remaining => "remaining",
            Op::Usage => "usage",
            Op::Reset => "reset",
            Op::Pause => "pause",
            Op::Observe => "observe",
            Op::Lease => "lease",
            Op::Return => "return",
            Op::Wait => "wait",
            Op::Leave => "leave",
        }
    }
}

fn code(dim: Dimension) -> u64 {
    match dim {
        Dimension::Requests => 1,
        Dimension::InputTokens => 2,
        Dimension::OutputTokens => 3,
        Dimension::TotalTokens => 4,
        Dimension::Cost => 5,
    }
}

fn dimension(code: i64) -> Dimension {
    match code {
        1 => Dimension::Requests,
        2 => Dimension::InputTokens,
        3 => Dimension::OutputTokens,
        4 => Dimension::TotalTokens,
        _ => Dimension::Cost,
    }
}

fn us(ns: u64) -> u64 {
    ns / 1_000
}

/// One key of a call: its Redis key, the generation a reservation saw, its limits.
#[derive(Clone)]
pub(crate) struct CallKey {
    pub(crate) name: Arc<str>,
    pub(crate) redis_key: String,
    pub(crate) generation: u64,
    /// The waiter's ticket in the key's queue (0 = none).
    pub(crate) ticket: u64,
    /// The key's limits as the script reads them (made once per limits).
    pub(crate) encoded: Arc<[u8]>,
}

/// A key's limits with their encoding for the script, made once when the
/// limiter is built rather than on every call.
#[derive(Clone)]
pub(crate) struct ScriptLimits {
    pub(crate) limits: Arc<Limits>,
    pub(crate) encoded: Arc<[u8]>,
}

impl ScriptLimits {
    pub(crate) fn new(limits: Limits) -> ScriptLimits {
        let encoded = encode_limits(&limits).into();
        ScriptLimits {
            limits: Arc::new(limits),
            encoded,
        }
    }
}

/// A script call, owned so that it can be moved onto the runtime.
pub(crate) struct Call {
    pub(crate) op: Op,
    /// Now on the limiter's clock (ns); `None` takes the server's time.
    pub(crate) now_ns: Option<u64>,
    pub(crate) usage: Usage,
    /// What a settle or refund takes away.
    pub(crate) sub: Usage,
    /// The reservation's time (adjust), a duration (pause) or a span (usage), in ns.
    pub(crate) extra_ns: Option<u64>,
    pub(crate) keys: Vec<CallKey>,
    pub(crate) observations: Vec<Observation>,
    /// Where refunds and resets are published.
    pub(crate) channel: Arc<str>,
    /// For a lease: the fraction of each limit a slice takes, in millionths.
    pub(crate) fraction_ppm: u64,
    /// The waiter whose tickets a wait or a leave names (0 = none).
    pub(crate) token: u64,
    /// How long a ticket stays queued without a refresh, in µs.
    pub(crate) ticket_lease_us: u64,
}

/// Numbers for the script, packed as little-endian doubles (one argument
/// unpacked by one `struct.unpack`, instead of a `tonumber` per argument).
/// Lua's numbers are doubles: a count is exact up to 2^53, as in the script.
struct Doubles(Vec<u8>);

impl Doubles {
    fn with_capacity(numbers: usize) -> Self {
        Doubles(Vec::with_capacity(8 * numbers))
    }

    fn push(&mut self, v: impl Into<Number>) -> &mut Self {
        self.0.extend_from_slice(&v.into().0.to_le_bytes());
        self
    }

    fn usage(&mut self, u: &Usage) -> &mut Self {
        self.push(u.requests)
            .push(u.input_tokens)
            .push(u.output_tokens)
            .push(u.cache_read_tokens)
            .push(u.cache_write_tokens)
            .push(u.cost_nanos)
    }
}

/// A number as the script reads it.
struct Number(f64);

impl From<u64> for Number {
    fn from(v: u64) -> Self {
        Number(v as f64)
    }
}

impl From<i64> for Number {
    fn from(v: i64) -> Self {
        Number(v as f64)
    }
}

/// A key's limits as the script reads them: windows, then (dimension, window, amount).
fn encode_limits(limits: &Limits) -> Vec<u8> {
    let windows = limits.windows();
    let mut out = Doubles::with_capacity(2 + windows.len() + 3 * limits.specs().len());
    out.push(windows.len() as u64);
    for w in windows {
        out.push(us(*w));
    }
    out.push(limits.specs().len() as u64);
    for spec in limits.specs() {
        out.push(code(spec.dimension))
            .push(us(spec.window_ns()))
            .push(spec.amount);
    }
    out.0
}

impl Call {
    /// The call of the limiter's code with this call's keys and arguments.
    pub(crate) fn command(&self, script: &LimiterScript) -> Cmd {
        let count = 18 + 2 * self.keys.len() + 1 + 3 * self.observations.len();
        let bytes: usize = self
            .keys
            .iter()
            .map(|k| k.redis_key.len() + k.encoded.len())
            .sum::<usize>()
            + 8 * count
            + self.channel.len()
            + 16;
        let mut cmd = script.invocation(self.keys.len(), 3 + 2 * self.keys.len(), bytes);
        for key in &self.keys {
            cmd.arg(&key.redis_key);
        }
        let mut numbers = Doubles::with_capacity(count);
        match self.now_ns {
            Some(ns) => numbers.push(us(ns)),
            None => numbers.push(-1i64),
        };
        numbers.usage(&self.usage).usage(&self.sub);
        match self.extra_ns {
            Some(ns) => numbers.push(us(ns)),
            None => numbers.push(-1i64),
        };
        numbers
            .push(self.token)
            .push(self.ticket_lease_us)
            .push(self.fraction_ppm);
        for key in &self.keys {
            numbers.push(key.generation).push(key.ticket);
        }
        if self.op == Op::Observe {
            numbers.push(self.observations.len() as u64);
            for o in &self.observations {
                numbers.push(code(o.dimension)).push(o.remaining);
                match o.reset_ns {
                    Some(ns) => numbers.push(us(ns)),
                    None => numbers.push(-1i64),
                };
            }
        }
        cmd.arg(self.op.name()).arg(numbers.0).arg(&*self.channel);
        for key in &self.keys {
            cmd.arg(&*key.encoded);
        }
        cmd
    }
}

impl Call {
    /// What undoes this call when nobody reads its reply (its caller is
    /// gone): the refund of an admission, or the leave of a waiter's tickets.
    pub(crate) fn undo_of(&self, reply: &[i64]) -> Option<Call> {
        if !matches!(self.op, Op::Acquire | Op::Wait) || reply.len() < 13 + self.keys.len() {
            return None;
        }
        if self.op == Op::Wait && reply.first() == Some(&0) {
            let (tickets, _) = tickets(reply, self.keys.len())?;
            let keys = self
                .keys
                .iter()
                .zip(tickets)
                .map(|(k, ticket)| CallKey {
                    ticket,
                    ..k.clone()
                })
                .collect();
            return Some(Call {
                op: Op::Leave,
                keys,
                ..self.clone_bare()
            });
        }
        if reply.first() != Some(&1) {
            return None;
        }
        let keys = self
            .keys
            .iter()
            .zip(&reply[13..])
            .map(|(k, g)| CallKey {
                name: k.name.clone(),
                redis_key: k.redis_key.clone(),
                generation: *g as u64,
                ticket: 0,
                encoded: k.encoded.clone(),
            })
            .collect();
        Some(Call {
            op: Op::Adjust,
            sub: self.usage,
            extra_ns: Some(reply[12].max(0) as u64 * 1_000),
            keys,
            ..self.clone_bare()
        })
    }

    /// This call's clock, channel and token, with no keys and no usage.
    fn clone_bare(&self) -> Call {
        Call {
            op: self.op,
            now_ns: self.now_ns,
            usage: Usage::ZERO,
            sub: Usage::ZERO,
            extra_ns: None,
            keys: Vec::new(),
            observations: Vec::new(),
            channel: self.channel.clone(),
            fraction_ppm: 0,
            token: self.token,
            ticket_lease_us: self.ticket_lease_us,
        }
    }

    /// The limiter keys of the call (its Redis keys without the prefix).
    pub(crate) fn keys_named(&self) -> Vec<Arc<str>> {
        self.keys.iter().map(|k| k.name.clone()).collect()
    }
}

/// A usage vector from the script (-1 reads as no limit).
pub(crate) fn usage_from(values: &[i64]) -> Usage {
    let count = |v: i64| if v < 0 { MAX_COUNT } else { v as u64 };
    Usage {
        requests: count(values[0]),
        input_tokens: count(values[1]),
        output_tokens: count(values[2]),
        cache_read_tokens: count(values[3]),
        cache_write_tokens: count(values[4]),
        cost_nanos: count(values[5]),
    }
}

/// The reply to an acquire or a check.
pub(crate) struct Verdict {
    /// 1 admitted, 0 not yet, -1 never.
    pub(crate) status: i64,
    pub(crate) retry_after_ns: Option<u64>,
    pub(crate) limit: Option<(usize, LimitSpec)>,
    pub(crate) remaining: Usage,
    /// The server's (or the given clock's) time of the call, in ns.
    pub(crate) at_ns: u64,
    pub(crate) generations: Vec<u64>,
}

/// Reads an acquire's or a check's reply; `limits` are those of each key.
pub(crate) fn verdict(reply: &[i64], limits: &[Arc<Limits>]) -> Option<Verdict> {
    if reply.len() < 13 + limits.len() {
        return None;
    }
    let key_index = (reply[3] as usize).saturating_sub(1);
    let limit = match reply[2] {
        1 => {
            let specs = limits.get(key_index)?.specs();
            Some((key_index, *specs.get((reply[4] as usize).checked_sub(1)?)?))
        }
        2 => Some((key_index, pause_spec())),
        3 => Some((
            key_index,
            LimitSpec {
                dimension: dimension(reply[4]),
                unit: Unit::Second,
                amount: reply[5].max(0) as u64,
                origin: LimitOrigin::Observed,
            },
        )),
        _ => None,
    };
    Some(Verdict {
        status: reply[0],
        retry_after_ns: (reply[1] >= 0).then(|| reply[1] as u64 * 1_000),
        limit,
        remaining: usage_from(&reply[6..12]),
        at_ns: reply[12].max(0) as u64 * 1_000,
        generations: reply[13..13 + limits.len()]
            .iter()
            .map(|g| *g as u64)
            .collect(),
    })
}

/// A wait's tickets (one per key, 0 = none) and whether it heads every queue.
pub(crate) fn tickets(reply: &[i64], keys: usize) -> Option<(Vec<u64>, bool)> {
    let start = 13 + keys;
    let part = reply.get(start..start + keys + 1)?;
    Some((
        part[..keys].iter().map(|t| (*t).max(0) as u64).collect(),
        part[keys] == 1,
    ))
}

/// A slice granted on one key: its usage, and the dimensions it bounds.
pub(crate) struct Granted {
    pub(crate) usage: Usage,
    pub(crate) dimensions: SmallVec<[Dimension; 5]>,
}

/// The slice granted on each key by a lease's reply (`None` when refused).
pub(crate) fn slices(reply: &[i64], keys: usize) -> Option<Vec<Granted>> {
    let start = 13 + keys;
    if reply.first() != Some(&1) || reply.len() < start + 7 * keys {
        return None;
    }
    Some(
        reply[start..start + 7 * keys]
            .chunks(7)
            .map(|c| Granted {
                usage: usage_from(&c[..6]),
                dimensions: Dimension::ALL
                    .into_iter()
                    .filter(|d| c[6] & (1 << code(*d)) != 0)
                    .collect(),
            })
            .collect(),
    )
}
