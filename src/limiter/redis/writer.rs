//! Settles and refunds, sent in order without the caller waiting: a task
//! takes every queued adjustment and sends them as one pipeline.

use super::call::Call;
use super::RedisInner;
use redis::aio::ConnectionManager;
use redis::Script;
use std::sync::Weak;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

enum Job {
    Adjust(Call, Option<Vec<std::sync::Arc<str>>>),
    Flush(oneshot::Sender<Result<(), String>>),
}

pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Job>,
}

/// Sends a batch: EVALSHA for each call, and once more after loading the
/// script when the server had lost it.
async fn send(conn: &mut ConnectionManager, script: &Script, calls: &[Call]) -> Result<(), String> {
    let pipeline = |script: &Script| {
        let mut pipe = redis::pipe();
        for call in calls {
            pipe.add_command(call.command(script.get_hash())).ignore();
        }
        pipe
    };
    match pipeline(script).query_async::<()>(conn).await {
        Ok(()) => Ok(()),
        Err(e) if super::is_noscript(&e) => {
            script
                .prepare_invoke()
                .load_async(conn)
                .await
                .map_err(|e| e.to_string())?;
            pipeline(script)
                .query_async::<()>(conn)
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

impl Writer {
    pub(crate) fn start(
        runtime: &Handle,
        mut conn: ConnectionManager,
        script: Script,
        url: String,
        owner: Weak<RedisInner>,
    ) -> Writer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        runtime.spawn(async move {
            let mut last_error: Option<String> = None;
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                while let Ok(job) = rx.try_recv() {
                    jobs.push(job);
                }
                let mut calls = Vec::new();
                let mut wakes = Vec::new();
                let mut flushes = Vec::new();
                for job in jobs {
                    match job {
                        Job::Adjust(call, wake) => {
                            calls.push(call);
                            wakes.extend(wake.into_iter().flatten());
                        }
                        Job::Flush(done) => flushes.push(done),
                    }
                }
                if !calls.is_empty() {
                    if let Err(e) = send(&mut conn, &script, &calls).await {
                        last_error = Some(format!("settles to Redis at {url} failed: {e}"));
                    }
                }
                if !wakes.is_empty() {
                    if let Some(inner) = owner.upgrade() {
                        inner.queues.lock().wake_heads(&wakes);
                    }
                }
                for done in flushes {
                    let _ = done.send(match last_error.take() {
                        Some(e) => Err(e),
                        None => Ok(()),
                    });
                }
            }
        });
        Writer { tx }
    }

    /// Queues an adjustment; `wake` names the keys whose waiters a refund frees.
    pub(crate) fn send(&self, call: Call, wake: Option<Vec<std::sync::Arc<str>>>) {
        let _ = self.tx.send(Job::Adjust(call, wake));
    }

    /// Resolves once everything queued before it has reached Redis.
    pub(crate) fn flush(&self) -> impl std::future::Future<Output = Result<(), String>> {
        let (done, wait) = oneshot::channel();
        let sent = self.tx.send(Job::Flush(done)).is_ok();
        async move {
            if !sent {
                return Ok(());
            }
            wait.await.unwrap_or(Ok(()))
        }
    }
}
