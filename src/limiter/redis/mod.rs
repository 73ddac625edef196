//! The limiter on a Redis server, shared by every process and host that
//! uses it. Every operation is one call of one Lua library (a Redis
//! Function, or a script called by SHA where Functions are unavailable;
//! loaded again when the server has lost it: see `script`), which checks and
//! records every dimension, window and key of a request atomically, on
//! running sums per bucketed window. Time is the server's (`TIME`) unless a
//! clock is given, so hosts with skewed clocks agree.
//!
//! Settles and refunds are sent in order by a background task without the
//! caller waiting; `close` flushes them. Waiters queue FIFO per key across
//! processes (tickets in Redis, leased) and sleep until the exact moment
//! they would fit, woken early by refunds, resets, departures from the queue
//! and manual clock moves.

mod call;
pub mod fallback;
pub mod lease;
mod pipe;
mod script;
mod slot;
#[cfg(test)]
mod tests;
mod tls;
mod waiting;
mod wakeups;

use super::backend::{Limiter, Started};
use super::{Decision, Observation, Reservation};
use crate::clock::{Clock, ClockListener};
use crate::error::{CoreError, CoreResult};
use crate::limits::Limits;
use crate::usage::Usage;
use call::{Call, CallKey, Op, ScriptLimits};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::runtime::Handle;

/// How a Redis limiter connects and names its keys.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
    /// The most any one round trip may take before the call fails.
    pub timeout: Duration,
}

pub(crate) struct RedisInner {
    /// For SCAN (reset of every key); every script call goes through `pipe`.
    conn: ConnectionManager,
    runtime: Handle,
    config: RedisConfig,
    default_limits: ScriptLimits,
    per_key: HashMap<String, ScriptLimits>,
    clock: Option<Arc<dyn Clock>>,
    cluster: bool,
    /// The pub/sub channel of refunds and resets under this prefix.
    channel: Arc<str>,
    /// What every Redis key of this limiter starts with: the prefix and the
    /// layout's version (`<prefix>:v2:`).
    key_head: String,
    pipe: pipe::Pipe,
    queues: Mutex<waiting::Queues>,
}

/// A rate limiter whose state lives in Redis. Cloning shares the connection.
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<RedisInner>,
}

pub(crate) fn unavailable(url: &str, what: impl std::fmt::Display) -> CoreError {
    CoreError::Unavailable(format!("Redis at {url} is unavailable: {what}"))
}

/// The URL without a password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// How every connection to Redis behaves: a timeout on connecting and on
/// each reply, and reconnection with backoff.
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}

/// A connection to `url` made as a limiter's is, for other state kept on
/// Redis (shared budgets); `argument` names the URL in errors. Returns it
/// with the URL shown in messages (without its password).
pub(crate) fn open(
    url: &str,
    timeout: Duration,
    runtime: &Handle,
    argument: &'static str,
) -> CoreResult<(ConnectionManager, String)> {
    let shown = redacted(url);
    let client = tls::client(url, &shown, argument)?;
    let conn = runtime
        .block_on(async {
            tokio::time::timeout(
                timeout * 3,
                ConnectionManager::new_with_config(client, manager_config(timeout)),
            )
            .await
        })
        .map_err(|_| unavailable(&shown, "timed out connecting"))?
        .map_err(|e| unavailable(&shown, e))?;
    Ok((conn, shown))
}

impl RedisLimiter {
    /// The limiter's connection, for other state kept on the same server.
    pub fn connection(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// The runtime its round trips run on.
    pub fn runtime(&self) -> &Handle {
        &self.inner.runtime
    }

    /// Connects (within the timeout) on `runtime`, and loads the script.
    pub fn connect(
        config: RedisConfig,
        default_limits: Limits,
        per_key: impl IntoIterator<Item = (String, Limits)>,
        clock: Option<Arc<dyn Clock>>,
        runtime: Handle,
    ) -> CoreResult<RedisLimiter> {
        let shown = redacted(&config.url);
        let client = tls::client(&config.url, &shown, "url")?;
        let manager_client = client.clone();
        let timeout = config.timeout;
        let mut script = script::LimiterScript::new();
        let setup = async {
            let mut conn =
                ConnectionManager::new_with_config(manager_client, manager_config(timeout)).await?;
            let info: String = redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut conn)
                .await?;
            script.load(&mut conn).await?;
            Ok::<_, redis::RedisError>((conn, info.contains("cluster_enabled:1"), script))
        };
        let (conn, cluster, script) = runtime
            .block_on(async { tokio::time::timeout(timeout * 3, setup).await })
            .map_err(|_| unavailable(&shown, "timed out connecting"))?
            .map_err(|e| unavailable(&shown, e))?;
        let channel: Arc<str> = Arc::from(format!("{}:wake", config.prefix));
        let key_head = format!("{}:{}:", config.prefix, script::LAYOUT);
        let inner = Arc::new_cyclic(|owner| RedisInner {
            pipe: pipe::Pipe::start(
                &runtime,
                conn.clone(),
                script,
                shown.clone(),
                timeout,
                owner.clone(),
            ),
            conn,
            runtime,
            config: RedisConfig {
                url: shown,
                ..config
            },
            default_limits: ScriptLimits::new(default_limits),
            per_key: per_key
                .into_iter()
                .map(|(k, l)| (k, ScriptLimits::new(l)))
                .collect(),
            clock,
            cluster,
            channel,
            key_head,
            queues: Mutex::new(waiting::Queues::default()),
        });
        if let Some(clock) = &inner.clock {
            clock.subscribe(Arc::downgrade(&inner) as Weak<dyn ClockListener>);
        }
        wakeups::listen(
            &inner.runtime,
            client,
            inner.channel.clone(),
            Arc::downgrade(&inner),
        );
        Ok(RedisLimiter { inner })
    }

    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    pub fn is_cluster(&self) -> bool {
        self.inner.cluster
    }

    /// Sends every pending settle and refund, and waits until Redis has them.
    pub fn flush(&self) -> CoreResult<()> {
        let inner = &self.inner;
        let done = inner.pipe.flush();
        if Handle::try_current().is_ok() {
            // On a runtime thread (a drop there): the queue is sent regardless;
            // blocking on it here would stall the runtime.
            return Ok(());
        }
        inner
            .runtime
            .block_on(async { tokio::time::timeout(inner.config.timeout * 3, done).await })
            .map_err(|_| unavailable(&inner.config.url, "timed out flushing settles"))?
            .map_err(|e| unavailable(&inner.config.url, e))
    }

    /// One PING through the path every call takes (the round-trip floor).
    pub fn ping(&self) -> CoreResult<()> {
        let inner = self.inner.clone();
        self.inner.block(async move { inner.pipe.ping().await })
    }
}

impl RedisInner {
    fn script_limits(&self, key: &str) -> &ScriptLimits {
        self.per_key.get(key).unwrap_or(&self.default_limits)
    }

    fn limits_for(&self, key: &str) -> Arc<Limits> {
        self.script_limits(key).limits.clone()
    }

    fn redis_key(&self, key: &str) -> String {
        let mut redis_key = String::with_capacity(self.key_head.len() + key.len());
        redis_key.push_str(&self.key_head);
        redis_key.push_str(key);
        redis_key
    }

    /// The limiter key of a Redis key of this limiter.
    fn key_of<'a>(&self, redis_key: &'a str) -> Option<&'a str> {
        redis_key.strip_prefix(&self.key_head)
    }

    fn now(&self) -> Option<u64> {
        self.clock.as_ref().map(|c| c.now())
    }

    pub(crate) fn call_key(&self, key: &str, generation: u64) -> CallKey {
        let limits = self.script_limits(key);
        CallKey {
            name: Arc::from(key),
            redis_key: self.redis_key(key),
            generation,
            ticket: 0,
            encoded: limits.encoded.clone(),
        }
    }

    /// The keys of a call; a cross-slot tuple on a cluster is refused.
    fn call_keys(&self, keys: &[&str]) -> CoreResult<Vec<CallKey>> {
        super::check_keys(keys)?;
        if self.cluster && keys.len() > 1 {
            let first = slot::of(&self.redis_key(keys[0]));
            if let Some(other) = keys[1..]
                .iter()
                .find(|k| slot::of(&self.redis_key(k)) != first)
            {
                return Err(CoreError::InvalidArgument(
                    "key",
                    format!(
                        "{:?} and {other:?} are in different hash slots of the Redis cluster; \
                         give the keys of a tuple one hash tag, e.g. \"{{tenant}}:alice\"",
                        keys[0]
                    ),
                ));
            }
        }
        Ok(keys.iter().map(|k| self.call_key(k, 0)).collect())
    }

    fn call(&self, op: Op, keys: Vec<CallKey>) -> Call {
        Call {
            op,
            now_ns: self.now(),
            usage: Usage::ZERO,
            sub: Usage::ZERO,
            extra_ns: None,
            keys,
            observations: Vec::new(),
            channel: self.channel.clone(),
            fraction_ppm: 0,
            token: 0,
            ticket_lease_us: waiting::TICKET_LEASE.as_micros() as u64,
        }
    }

    /// One script call, through the pipe (within the timeout). Every reply
    /// is a list of integers.
    fn run(
        self: &Arc<Self>,
        call: Call,
    ) -> impl Future<Output = CoreResult<Vec<i64>>> + Send + 'static {
        let inner = self.clone();
        async move { inner.pipe.call(call).await }
    }

    /// Waits on this thread for a future run on the runtime.
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = CoreResult<T>> + Send + 'static,
    ) -> CoreResult<T> {
        self.runtime.block_on(fut)
    }

    fn limits_of(&self, keys: &[&str]) -> Vec<Arc<Limits>> {
        keys.iter().map(|k| self.limits_for(k)).collect()
    }

    /// Turns an acquire's or a check's reply into a decision.
    fn decision(
        self: &Arc<Self>,
        keys: &[&str],
        usage: Usage,
        reply: &[i64],
        record: bool,
    ) -> CoreResult<Decision> {
        let v = call::verdict(reply, &self.limits_of(keys)).ok_or_else(|| {
            unavailable(
                &self.config.url,
                "the limiter script gave an unexpected reply",
            )
        })?;
        let reservation = (record && v.status == 1).then(|| {
            let held = keys
                .iter()
                .zip(&v.generations)
                .map(|(k, g)| (Arc::from(*k), *g))
                .collect();
            Reservation::new(self.clone(), held, v.at_ns, usage)
        });
        Ok(Decision {
            allowed: v.status == 1,
            retry_after_ns: v.retry_after_ns,
            limit: v.limit,
            remaining: v.remaining,
            reservation,
        })
    }

    fn decide(self: &Arc<Self>, keys: &[&str], usage: Usage, op: Op) -> CoreResult<Decision> {
        let mut call = self.call(op, self.call_keys(keys)?);
        call.usage = usage;
        // The script refuses while tickets are queued in Redis (this
        // process's waiters hold them too); local waiters still taking their
        // first ticket are ahead all the same: this fits once they and it do.
        let queued = self.queues.lock().unticketed_usage(keys);
        if let Some(ahead) = queued {
            call.op = Op::Check;
            call.usage = ahead.saturating_add(usage);
        }
        let reply = self.block(self.run(call))?;
        let record = op == Op::Acquire && queued.is_none();
        let mut decision = self.decision(keys, usage, &reply, record)?;
        if queued.is_some() && decision.allowed {
            decision.allowed = false;
            decision.retry_after_ns = Some(0);
        }
        if queued.is_some_and(|a| !a.is_zero()) && decision.retry_after_ns.is_none() {
            // Larger together than a limit: say when it fits on its own.
            let mut alone = self.call(Op::Check, self.call_keys(keys)?);
            alone.usage = usage;
            let reply = self.block(self.run(alone))?;
            decision = self.decision(keys, usage, &reply, false)?;
            decision.allowed = false;
        }
        Ok(decision)
    }

    fn simple(
        self: &Arc<Self>,
        op: Op,
        keys: &[&str],
        extra_ns: Option<u64>,
        observations: &[Observation],
    ) -> CoreResult<Vec<i64>> {
        let mut call = self.call(op, self.call_keys(keys)?);
        call.extra_ns = extra_ns;
        call.observations = observations.to_vec();
        self.block(self.run(call))
    }
}

impl ClockListener for RedisInner {
    /// A manual clock moved: every local waiter re-checks.
    fn on_advance(&self) {
        self.queues.lock().wake_all();
    }
}

impl super::reservation::Adjust for RedisInner {
    /// Queued for the background writer; the caller does not wait.
    fn adjust(&self, held: &[(Arc<str>, u64)], at: u64, add: Usage, sub: Usage) {
        self.send_adjust(Op::Adjust, held, at, add, sub);
    }
}

impl RedisInner {
    /// A settle, refund or slice return (`op`), sent without waiting.
    fn send_adjust(&self, op: Op, held: &[(Arc<str>, u64)], at: u64, add: Usage, sub: Usage) {
        let keys = held.iter().map(|(k, g)| self.call_key(k, *g)).collect();
        let mut call = self.call(op, keys);
        call.usage = add;
        call.sub = sub;
        call.extra_ns = Some(at);
        let wake = if sub.is_zero() {
            Vec::new()
        } else {
            held.iter().map(|(k, _)| k.clone()).collect()
        };
        self.pipe.send(call, wake);
    }
}

impl Limiter for RedisLimiter {
    fn try_acquire(&self, keys: &[&str], usage: Usage) -> CoreResult<Decision> {
        self.inner.decide(keys, usage, Op::Acquire)
    }

    fn check(&self, keys: &[&str], usage: Usage) -> CoreResult<Decision> {
        self.inner.decide(keys, usage, Op::Check)
    }

    fn start_acquire(
        &self,
        keys: &[&str],
        usage: Usage,
        timeout_ns: Option<u64>,
    ) -> CoreResult<Started> {
        waiting::start(&self.inner, keys, usage, timeout_ns)
    }

    fn acquire_blocking(
        &self,
        keys: &[&str],
        usage: Usage,
        timeout_ns: Option<u64>,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> CoreResult<Reservation> {
        waiting::blocking(&self.inner, keys, usage, timeout_ns, interrupted)
    }

    fn usage(&self, key: &str, span: Option<u64>) -> CoreResult<Usage> {
        let limits = self.inner.limits_for(key);
        let longest = limits.windows().last().copied();
        match (span, longest) {
            (_, None) => return Ok(Usage::ZERO),
            (Some(0), _) => {
                return Err(CoreError::InvalidArgument(
                    "window_seconds",
                    "must be positive".into(),
                ))
            }
            (Some(span), Some(longest)) if span > longest => {
                return Err(CoreError::InvalidArgument(
                    "window_seconds",
                    "must not exceed the longest limit window".into(),
                ))
            }
            _ => {}
        }
        let reply = self.inner.simple(Op::Usage, &[key], span, &[])?;
        Ok(call::usage_from(&reply))
    }

    fn remaining(&self, keys: &[&str]) -> CoreResult<Usage> {
        let reply = self.inner.simple(Op::Remaining, keys, None, &[])?;
        Ok(call::usage_from(&reply))
    }

    fn reset(&self, key: Option<&str>) -> CoreResult<()> {
        match key {
            Some(key) => {
                self.inner.simple(Op::Reset, &[key], None, &[])?;
                self.inner.queues.lock().wake_heads(&[Arc::from(key)]);
            }
            None => {
                for key in self.keys()? {
                    self.inner.simple(Op::Reset, &[&key], None, &[])?;
                }
                self.inner.queues.lock().wake_all();
            }
        }
        Ok(())
    }

    fn pause(&self, keys: &[&str], duration_ns: u64) -> CoreResult<()> {
        if duration_ns == 0 {
            return Err(CoreError::InvalidArgument(
                "seconds",
                "must be a finite number of seconds > 0".into(),
            ));
        }
        self.inner.simple(Op::Pause, keys, Some(duration_ns), &[])?;
        Ok(())
    }

    fn observe(&self, keys: &[&str], observations: &[Observation]) -> CoreResult<()> {
        self.inner.simple(Op::Observe, keys, None, observations)?;
        Ok(())
    }
}

impl RedisLimiter {
    /// The limiter keys with state in Redis (under this limiter's prefix).
    pub fn keys(&self) -> CoreResult<Vec<String>> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let pattern = format!("{}*", redis_glob_escape(&inner.key_head));
        let prefix_len = inner.key_head.len();
        let url = inner.config.url.clone();
        let timeout = inner.config.timeout;
        inner.block(async move {
            let mut found = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                let step = scan.query_async::<(u64, Vec<String>)>(&mut conn);
                let (next, keys) = tokio::time::timeout(timeout, step)
                    .await
                    .map_err(|_| unavailable(&url, "SCAN timed out"))?
                    .map_err(|e| unavailable(&url, e))?;
                found.extend(keys.into_iter().map(|k| k[prefix_len..].to_string()));
                if next == 0 {
                    return Ok(found);
                }
                cursor = next;
            }
        })
    }
}

/// Escapes the glob characters of a key prefix for SCAN MATCH.
fn redis_glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
