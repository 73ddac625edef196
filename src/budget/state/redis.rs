//! The state on a Redis server, shared by every process and host that uses
//! it: each operation is one call of `budgets.lua` over every slot of a call
//! (loaded once and called by SHA, reloaded after a `SCRIPT FLUSH`), on the
//! connection of a `RedisLimiter` or one made the same way, within its
//! timeout.
//!
//! Keys: `<prefix>.budgets:{b}:<budget digest>:<scope value>` (and `…:held`,
//! its reservations in flight). They share one hash tag so that a call over
//! several budgets stays one atomic script on a cluster too, and sit outside
//! the limiter's `<prefix>:*` keys. A key outlives its period by a day and
//! is dropped after; an evicted or lost key is seeded again from the ledger.
//!
//! A reservation is held until `RESERVATION_DEADLINE` after it was made: the
//! estimate of a process that died without settling is released then (a call
//! settled later still adds its cost).

use super::{BudgetState, Figures, Reserved, SlotSpec};
use crate::error::{CoreError, CoreResult};
use crate::limiter::redis::RedisLimiter;
use redis::aio::ConnectionManager;
use redis::Script;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;

const SCRIPT: &str = include_str!("budgets.lua");

/// How long a reservation holds its estimate without being settled.
pub const RESERVATION_DEADLINE_US: i64 = 10 * 60 * 1_000_000;

pub struct RedisState {
    conn: ConnectionManager,
    runtime: Handle,
    script: Script,
    prefix: String,
    /// The server's URL without its password, for messages.
    url: String,
    timeout: Duration,
    /// Makes this process's reservation ids unique on the server.
    token: String,
}

impl RedisState {
    /// On the connection of `limiter`, under its prefix and timeout.
    pub fn on(limiter: &RedisLimiter) -> CoreResult<RedisState> {
        let config = limiter.config();
        let state = RedisState {
            conn: limiter.connection(),
            runtime: limiter.runtime().clone(),
            script: Script::new(SCRIPT),
            prefix: config.prefix.clone(),
            url: config.url.clone(),
            timeout: config.timeout,
            token: uuid::Uuid::now_v7().simple().to_string(),
        };
        state.load()?;
        Ok(state)
    }

    /// Connects to `url` as a limiter does (see `RedisLimiter::open`).
    pub fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        runtime: Handle,
    ) -> CoreResult<RedisState> {
        let (conn, shown) = crate::limiter::redis::open(url, timeout, &runtime, "shared")?;
        let state = RedisState {
            conn,
            runtime,
            script: Script::new(SCRIPT),
            prefix: prefix.to_string(),
            url: shown,
            timeout,
            token: uuid::Uuid::now_v7().simple().to_string(),
        };
        state.load()?;
        Ok(state)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn unavailable(&self, what: impl std::fmt::Display) -> CoreError {
        CoreError::Unavailable(format!(
            "Redis at {} is unavailable for shared budgets: {what}",
            self.url
        ))
    }

    fn load(&self) -> CoreResult<()> {
        let mut conn = self.conn.clone();
        let script = self.script.clone();
        let timeout = self.timeout;
        self.runtime
            .block_on(async move {
                tokio::time::timeout(timeout, script.prepare_invoke().load_async(&mut conn)).await
            })
            .map_err(|_| self.unavailable("timed out loading the budget script"))?
            .map_err(|e| self.unavailable(e))?;
        Ok(())
    }

    fn key(&self, slot: &SlotSpec) -> String {
        format!("{}.budgets:{{b}}:{}", self.prefix, slot.id)
    }

    /// One script call over `slots`; `values` are merge's recorded spends.
    fn run(
        &self,
        op: &str,
        slots: &[SlotSpec],
        id: u64,
        amount: u64,
        values: Option<&[u64]>,
        now_us: i64,
    ) -> CoreResult<(i64, usize, Vec<Option<Figures>>)> {
        let mut invocation = self.script.prepare_invoke();
        for slot in slots {
            let key = self.key(slot);
            invocation.key(&key).key(format!("{key}:held"));
        }
        invocation
            .arg(op)
            .arg(now_us)
            .arg(format!("{}:{id}", self.token))
            .arg(amount)
            .arg(now_us.saturating_add(RESERVATION_DEADLINE_US));
        for (i, slot) in slots.iter().enumerate() {
            invocation
                .arg(slot.limit)
                .arg(u8::from(slot.soft))
                .arg(u8::from(slot.blocks))
                .arg(slot.period_start)
                .arg(slot.window_us.unwrap_or(0))
                .arg((slot.keep_us / 1_000).max(1))
                .arg(values.map_or(0, |v| v[i]))
                .arg(slot.thresholds.len());
            for t in slot.thresholds.iter() {
                invocation.arg(*t);
            }
        }
        let mut conn = self.conn.clone();
        let timeout = self.timeout;
        let reply: Vec<i64> = self
            .runtime
            .block_on(async move {
                tokio::time::timeout(timeout, invocation.invoke_async(&mut conn)).await
            })
            .map_err(|_| self.unavailable(format!("no reply within {timeout:?}")))?
            .map_err(|e| self.unavailable(e))?;
        if reply.len() != 2 + 6 * slots.len() {
            return Err(self.unavailable("the budget script gave an unexpected reply"));
        }
        let figures = reply[2..]
            .chunks(6)
            .map(|c| {
                (c[0] >= 0).then(|| Figures {
                    spent: c[0] as u64,
                    reserved: c[1].max(0) as u64,
                    over: c[2] != 0,
                    rolled: c[3] != 0,
                    fired_before: c[4].max(0) as usize,
                    fired: c[5].max(0) as usize,
                })
            })
            .collect();
        Ok((reply[0], reply[1].max(0) as usize, figures))
    }
}

fn known(figures: Vec<Option<Figures>>) -> Vec<Figures> {
    figures.into_iter().map(Option::unwrap_or_default).collect()
}

impl BudgetState for RedisState {
    fn reserve(
        &self,
        slots: &[SlotSpec],
        id: u64,
        estimate: u64,
        now_us: i64,
    ) -> CoreResult<Reserved> {
        let (status, index, figures) = self.run("reserve", slots, id, estimate, None, now_us)?;
        Ok(match status {
            1 => Reserved::Admitted(known(figures)),
            0 => Reserved::Refused {
                index: index.saturating_sub(1),
                figures: known(figures),
            },
            _ => Reserved::Unknown(
                figures
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.is_none())
                    .map(|(i, _)| i)
                    .collect(),
            ),
        })
    }

    fn settle(
        &self,
        slots: &[SlotSpec],
        id: u64,
        actual: u64,
        now_us: i64,
    ) -> CoreResult<Vec<Figures>> {
        let (_, _, figures) = self.run("settle", slots, id, actual, None, now_us)?;
        Ok(known(figures))
    }

    fn merge(&self, slots: &[SlotSpec], recorded: &[u64], now_us: i64) -> CoreResult<Vec<Figures>> {
        let (_, _, figures) = self.run("merge", slots, 0, 0, Some(recorded), now_us)?;
        Ok(known(figures))
    }

    fn figures(&self, slots: &[SlotSpec], now_us: i64) -> CoreResult<Vec<Option<Figures>>> {
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        let (_, _, figures) = self.run("figures", slots, 0, 0, None, now_us)?;
        Ok(figures)
    }

    /// Nothing to drop: the keys expire on their own.
    fn forget(&self, _ids: &[Arc<str>]) {}
}
