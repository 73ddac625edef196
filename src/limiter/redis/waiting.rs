//! Waiting for capacity on a Redis limiter: FIFO per key across processes.
//!
//! A waiter that cannot be admitted takes a ticket at the tail of every
//! key's queue in Redis (one script call, so the order is the same on every
//! key); only the head of every queue it is in is admitted, so a large
//! request is not starved by small ones from other hosts. A ticket is a
//! lease of [`TICKET_LEASE`], refreshed by the waiter's own attempts (at
//! least every [`TICKET_REFRESH`]): a holder that dies stops blocking the
//! queue once its lease runs out. Within the process the waiters keep their
//! tickets' order, and the head of every local queue tries the script;
//! when refused it sleeps until the exact `retry_after` (or its timeout),
//! woken early by a refund, reset or departure (pub/sub), or a manual clock
//! move. Nothing polls: a waiter calls again only to refresh its ticket.

use super::call::{self, Call, Op};
use super::RedisInner;
use crate::error::{CoreError, CoreResult};
use crate::limiter::backend::Started;
use crate::limiter::waiter::limited;
use crate::limiter::Reservation;
use crate::limits::LimitSpec;
use crate::usage::Usage;
use parking_lot::Mutex;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often a blocking wait wakes to let the caller handle signals.
const INTERRUPT_CHECK: Duration = Duration::from_millis(100);

/// How long a ticket holds its place without a refresh (on the Redis
/// server's clock): the longest a dead process blocks a queue.
pub const TICKET_LEASE: Duration = Duration::from_secs(5);

/// How often a waiter refreshes its tickets while it sleeps.
pub const TICKET_REFRESH: Duration = Duration::from_millis(2_500);

/// A token naming one waiter's tickets: random, below 2^53 (the script
/// keeps it in a double).
fn new_token() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (RandomState::new().hash_one(n) & ((1 << 52) - 1)) | 1
}

pub(crate) struct LocalWaiter {
    notify: Notify,
    usage: Usage,
    keys: Vec<Arc<str>>,
    token: u64,
    /// Its ticket on each of its keys, in their order (empty: none yet).
    tickets: Mutex<Vec<u64>>,
}

impl LocalWaiter {
    /// Its ticket on `key`; `u64::MAX` (last) while it has none.
    fn ticket_on(&self, key: &str) -> u64 {
        let tickets = self.tickets.lock();
        self.keys
            .iter()
            .position(|k| &**k == key)
            .and_then(|i| tickets.get(i).copied())
            .unwrap_or(u64::MAX)
    }

    fn has_tickets(&self) -> bool {
        !self.tickets.lock().is_empty()
    }
}

#[derive(Default)]
pub(crate) struct Queues {
    by_key: HashMap<Arc<str>, VecDeque<Arc<LocalWaiter>>>,
}

impl Queues {
    /// What the waiters queued on any of `keys` ask for together (`None`
    /// when nobody is queued).
    pub(crate) fn queued_usage(&self, keys: &[&str]) -> Option<Usage> {
        self.queued_by(keys, |_| true)
    }

    /// With waiters queued on any of `keys`: what those `counted` picks ask
    /// for together.
    fn queued_by(&self, keys: &[&str], counted: impl Fn(&LocalWaiter) -> bool) -> Option<Usage> {
        if self.by_key.is_empty() {
            return None;
        }
        let mut seen: Vec<&Arc<LocalWaiter>> = Vec::new();
        for key in keys {
            for w in self.by_key.get(*key).into_iter().flatten() {
                if !seen.iter().any(|s| Arc::ptr_eq(s, w)) {
                    seen.push(w);
                }
            }
        }
        (!seen.is_empty()).then(|| {
            seen.iter()
                .filter(|w| counted(w))
                .fold(Usage::ZERO, |a, w| a.saturating_add(w.usage))
        })
    }

    /// With waiters queued on any of `keys`: what those that have no
    /// ticket in Redis yet ask for together (`None` when nobody is queued).
    pub(crate) fn unticketed_usage(&self, keys: &[&str]) -> Option<Usage> {
        self.queued_by(keys, |w| !w.has_tickets())
    }

    fn join(&mut self, keys: &[Arc<str>], usage: Usage) -> Arc<LocalWaiter> {
        let me = Arc::new(LocalWaiter {
            notify: Notify::new(),
            usage,
            keys: keys.to_vec(),
            token: new_token(),
            tickets: Mutex::new(Vec::new()),
        });
        for key in keys {
            self.by_key
                .entry(key.clone())
                .or_default()
                .push_back(me.clone());
        }
        me
    }

    /// Records `me`'s tickets and keeps it at their place in each local
    /// queue: ticket order (the order in Redis), before those without one
    /// (it moves only when a lost ticket was taken again). The next waiter
    /// may then take its own.
    fn ticketed(&mut self, me: &Arc<LocalWaiter>, tickets: Vec<u64>) {
        *me.tickets.lock() = tickets;
        for key in &me.keys {
            let Some(queue) = self.by_key.get_mut(key) else {
                continue;
            };
            queue.retain(|w| !Arc::ptr_eq(w, me));
            let mine = me.ticket_on(key);
            let at = queue
                .iter()
                .position(|w| w.ticket_on(key) > mine)
                .unwrap_or(queue.len());
            queue.insert(at, me.clone());
        }
        self.wake_next_to_queue(&me.keys);
    }

    /// Whether every waiter ahead of `me` has its tickets: waiters take
    /// theirs in the order they came, so Redis keeps this process's order.
    fn may_take_tickets(&self, me: &Arc<LocalWaiter>) -> bool {
        me.keys.iter().all(|k| {
            self.by_key
                .get(k)
                .into_iter()
                .flatten()
                .take_while(|w| !Arc::ptr_eq(w, me))
                .all(|w| w.has_tickets())
        })
    }

    /// Wakes the first waiter without tickets on each of `keys`.
    fn wake_next_to_queue(&self, keys: &[Arc<str>]) {
        for key in keys {
            let queue = self.by_key.get(key).into_iter().flatten();
            if let Some(next) = queue.into_iter().find(|w| !w.has_tickets()) {
                next.notify.notify_one();
            }
        }
    }

    fn is_head(&self, keys: &[Arc<str>], me: &Arc<LocalWaiter>) -> bool {
        keys.iter().all(|k| {
            self.by_key
                .get(k)
                .and_then(VecDeque::front)
                .is_some_and(|h| Arc::ptr_eq(h, me))
        })
    }

    /// Leaves every queue; the new heads are woken.
    fn leave(&mut self, keys: &[Arc<str>], me: &Arc<LocalWaiter>) {
        for key in keys {
            if let Some(queue) = self.by_key.get_mut(key) {
                queue.retain(|w| !Arc::ptr_eq(w, me));
                match queue.front() {
                    Some(head) => head.notify.notify_one(),
                    None => {
                        self.by_key.remove(key);
                    }
                }
            }
        }
        self.wake_next_to_queue(keys);
    }

    pub(crate) fn wake_heads(&self, keys: &[Arc<str>]) {
        for key in keys {
            if let Some(head) = self.by_key.get(key).and_then(VecDeque::front) {
                head.notify.notify_one();
            }
        }
    }

    pub(crate) fn wake_all(&self) {
        for queue in self.by_key.values() {
            for w in queue {
                w.notify.notify_one();
            }
        }
    }
}

/// Leaves the queues (local and in Redis) when the wait ends, however it ends.
struct Place {
    inner: Arc<RedisInner>,
    keys: Vec<Arc<str>>,
    me: Arc<LocalWaiter>,
}

impl Place {
    /// One attempt: admitted, or queued with its tickets refreshed.
    fn attempt(&self, usage: Usage) -> CoreResult<Call> {
        let names: Vec<&str> = self.keys.iter().map(|k| &**k).collect();
        let mut keys = self.inner.call_keys(&names)?;
        for (key, ticket) in keys.iter_mut().zip(self.me.tickets.lock().iter()) {
            key.ticket = *ticket;
        }
        let mut call = self.inner.call(Op::Wait, keys);
        call.usage = usage;
        call.token = self.me.token;
        Ok(call)
    }

    /// Gives up the tickets in Redis (sent in order, without waiting).
    fn leave_redis(&self) {
        let tickets = std::mem::take(&mut *self.me.tickets.lock());
        if tickets.is_empty() {
            return;
        }
        let keys = self
            .keys
            .iter()
            .zip(tickets)
            .map(|(k, ticket)| call::CallKey {
                ticket,
                ..self.inner.call_key(k, 0)
            })
            .collect();
        let mut call = self.inner.call(Op::Leave, keys);
        call.token = self.me.token;
        self.inner.pipe.send(call, self.keys.clone());
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.leave_redis();
        self.inner.queues.lock().leave(&self.keys, &self.me);
    }
}

/// The limit `usage` can never fit in, on any of `keys`.
pub(crate) fn too_large(
    inner: &RedisInner,
    keys: &[&str],
    usage: &Usage,
) -> Option<(usize, LimitSpec)> {
    keys.iter().enumerate().find_map(|(i, key)| {
        inner
            .limits_for(key)
            .specs()
            .iter()
            .find(|s| usage.get(s.dimension) > s.amount)
            .map(|s| (i, *s))
    })
}

/// Where a timeout falls: on the manual clock (ns), or real time.
enum Deadline {
    Manual(u64),
    Real(Instant),
}

pub(crate) fn start(
    inner: &Arc<RedisInner>,
    keys: &[&str],
    usage: Usage,
    timeout_ns: Option<u64>,
) -> CoreResult<Started> {
    inner.call_keys(keys)?;
    let owned: Vec<Arc<str>> = keys.iter().map(|k| Arc::from(*k)).collect();
    if let Some(limit) = too_large(inner, keys, &usage) {
        return Err(CoreError::RateLimited(limited(
            &owned,
            None,
            Some(limit),
            "",
        )));
    }
    let deadline = timeout_ns.map(|t| match inner.now() {
        Some(now) => Deadline::Manual(now.saturating_add(t)),
        None => Deadline::Real(Instant::now() + Duration::from_nanos(t)),
    });
    let me = inner.queues.lock().join(&owned, usage);
    let place = Place {
        inner: inner.clone(),
        keys: owned,
        me,
    };
    Ok(Started::Waiting(
        Box::pin(wait(place, usage, deadline)),
        None,
    ))
}

fn unexpected(inner: &RedisInner) -> CoreError {
    super::unavailable(
        &inner.config.url,
        "the limiter script gave an unexpected reply",
    )
}

async fn wait(place: Place, usage: Usage, deadline: Option<Deadline>) -> CoreResult<Reservation> {
    let inner = place.inner.clone();
    let names: Vec<&str> = place.keys.iter().map(|k| &**k).collect();
    let mut refresh_at = Instant::now();
    loop {
        let (at_head, may_queue) = {
            let queues = inner.queues.lock();
            let at_head = queues.is_head(&place.keys, &place.me);
            (at_head, at_head || queues.may_take_tickets(&place.me))
        };
        let due = match place.me.has_tickets() {
            true => Instant::now() >= refresh_at,
            false => may_queue,
        };
        // On the limiter's clock: when it fits (the head of every queue);
        // in real time: when to look again (behind another process's head).
        let (mut fits_in, mut look_in) = (None, None);
        if at_head || due {
            let reply = inner.run(place.attempt(usage)?).await?;
            refresh_at = Instant::now() + TICKET_REFRESH;
            let (tickets, heads) =
                call::tickets(&reply, place.keys.len()).ok_or_else(|| unexpected(&inner))?;
            let mut decision = inner.decision(&names, usage, &reply, true)?;
            if let Some(reservation) = decision.reservation.take() {
                place.me.tickets.lock().clear(); // the script dropped them
                drop(place); // leaves the local queues and wakes whoever is next
                return Ok(reservation);
            }
            if decision.retry_after_ns.is_none() {
                place.me.tickets.lock().clear();
                return Err(CoreError::RateLimited(limited(
                    &place.keys,
                    None,
                    decision.limit,
                    "",
                )));
            }
            inner.queues.lock().ticketed(&place.me, tickets);
            if heads {
                fits_in = decision.retry_after_ns;
            } else {
                look_in = decision.retry_after_ns;
            }
        }
        let left = match &deadline {
            None => None,
            Some(Deadline::Manual(at)) => Some(at.saturating_sub(inner.now().unwrap_or(0))),
            Some(Deadline::Real(at)) => {
                Some(at.saturating_duration_since(Instant::now()).as_nanos() as u64)
            }
        };
        if left == Some(0) {
            let (wait_ns, limit) = when_it_fits(&place, &names, usage).await?;
            return Err(CoreError::RateLimited(limited(
                &place.keys,
                wait_ns,
                limit,
                "timed out waiting for capacity",
            )));
        }
        let notified = place.me.notify.notified();
        // Real time: the tickets' refresh (a waiter without any yet waits
        // for the one ahead to take its own), a look at a head that may have
        // died; and, without a manual clock (whose moves wake every waiter),
        // the exact moment it fits and the timeout.
        let mut sleep = place
            .me
            .has_tickets()
            .then(|| refresh_at.saturating_duration_since(Instant::now()));
        let mut shorten = |ns: Option<u64>| {
            if let Some(ns) = ns {
                let ns = Duration::from_nanos(ns);
                sleep = Some(sleep.map_or(ns, |s| s.min(ns)));
            }
        };
        shorten(look_in);
        if inner.clock.is_none() {
            shorten(fits_in);
            shorten(left);
        }
        match sleep {
            Some(sleep) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(sleep) => {}
                }
            }
            None => notified.await,
        }
    }
}

/// When the request would fit (now) once the waiters queued in Redis had
/// gone first, for the error of a wait that timed out; it leaves first.
async fn when_it_fits(
    place: &Place,
    names: &[&str],
    usage: Usage,
) -> CoreResult<(Option<u64>, Option<(usize, LimitSpec)>)> {
    let inner = &place.inner;
    place.leave_redis();
    let mut call = inner.call(Op::Check, inner.call_keys(names)?);
    call.usage = usage;
    let reply = inner.run(call).await?;
    let decision = inner.decision(names, usage, &reply, false)?;
    if decision.allowed {
        return Ok((None, None));
    }
    Ok((decision.retry_after_ns, decision.limit))
}

/// Waits on this thread (the wait itself runs on the runtime).
pub(crate) fn blocking(
    inner: &Arc<RedisInner>,
    keys: &[&str],
    usage: Usage,
    timeout_ns: Option<u64>,
    interrupted: &mut dyn FnMut() -> bool,
) -> CoreResult<Reservation> {
    let fut = match start(inner, keys, usage, timeout_ns)? {
        Started::Granted(r) => return Ok(r),
        Started::Waiting(fut, _) => fut,
    };
    let mut task = inner.runtime.spawn(fut);
    loop {
        let step = inner
            .runtime
            .block_on(async { tokio::time::timeout(INTERRUPT_CHECK, &mut task).await });
        match step {
            Ok(Ok(result)) => return result,
            Ok(Err(join)) => return Err(CoreError::Store(format!("wait failed: {join}"))),
            Err(_) if interrupted() => {
                task.abort();
                if let Ok(Ok(reservation)) = inner.runtime.block_on(task) {
                    let _ = reservation.cancel();
                }
                return Err(CoreError::Interrupted);
            }
            Err(_) => {}
        }
    }
}
