//! Every script call of a limiter goes through one task, in order: it takes
//! whatever is queued and sends it as one pipeline. So settles and refunds
//! are sent without the caller waiting, yet a later call of the same process
//! always sees them; concurrent callers share round trips.

use super::call::{Call, Op};
use super::script::{self, LimiterScript};
use super::RedisInner;
use crate::error::{CoreError, CoreResult};
use redis::aio::ConnectionManager;
use redis::{RedisResult, Value};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

/// A call's reply, with the call itself: whoever ends up holding a reply
/// nobody reads can still undo what it did.
type Reply = oneshot::Sender<(CoreResult<Vec<i64>>, Box<Call>)>;

enum Job {
    /// A call; its reply is awaited unless `reply` is `None` (a settle or a
    /// refund, which wakes the local waiters of `wake` once sent).
    Call {
        call: Box<Call>,
        reply: Option<Reply>,
        wake: Vec<Arc<str>>,
    },
    Ping(oneshot::Sender<CoreResult<()>>),
    /// Resolves once everything queued before it has been answered.
    Flush(oneshot::Sender<Result<(), String>>),
}

pub(crate) struct Pipe {
    tx: mpsc::UnboundedSender<Job>,
}

fn is_noscript(r: &RedisResult<Value>) -> bool {
    matches!(r, Err(e) if script::is_missing(e))
}

struct Sender {
    conn: ConnectionManager,
    script: LimiterScript,
    url: String,
    timeout: Duration,
}

impl Sender {
    /// Sends one pipeline; calls refused because the server had lost the
    /// code (nothing of them ran) are sent again once it is loaded.
    async fn send(&mut self, cmds: Vec<redis::Cmd>) -> Result<Vec<RedisResult<Value>>, String> {
        let mut pipe = redis::Pipeline::with_capacity(cmds.len());
        pipe.ignore_errors();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        let mut results = self.pipeline(&pipe).await?;
        if results.iter().any(is_noscript) {
            self.script
                .load(&mut self.conn)
                .await
                .map_err(|e| e.to_string())?;
            let mut again = Vec::new();
            let mut retry = redis::pipe();
            retry.ignore_errors();
            for (i, cmd) in pipe.cmd_iter().enumerate() {
                if is_noscript(&results[i]) {
                    again.push(i);
                    retry.add_command(cmd.clone());
                }
            }
            for (i, r) in again.into_iter().zip(self.pipeline(&retry).await?) {
                results[i] = r;
            }
        }
        Ok(results)
    }

    async fn pipeline(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<RedisResult<Value>>, String> {
        match tokio::time::timeout(self.timeout, pipe.query_async(&mut self.conn)).await {
            Ok(Ok(results)) => Ok(results),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no reply within {:?}", self.timeout)),
        }
    }
}

impl Pipe {
    pub(crate) fn start(
        runtime: &Handle,
        conn: ConnectionManager,
        script: LimiterScript,
        url: String,
        timeout: Duration,
        owner: Weak<RedisInner>,
    ) -> Pipe {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let requeue = tx.clone();
        let mut sender = Sender {
            conn,
            script,
            url,
            timeout,
        };
        runtime.spawn(async move {
            let mut failed_settles: Option<String> = None;
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                while let Ok(job) = rx.try_recv() {
                    jobs.push(job);
                }
                let cmds: Vec<redis::Cmd> = jobs
                    .iter()
                    .filter_map(|job| match job {
                        Job::Call { call, .. } => Some(call.command(&sender.script)),
                        Job::Ping(_) => Some(redis::cmd("PING")),
                        Job::Flush(_) => None,
                    })
                    .collect();
                let sent = cmds.len();
                let results = if cmds.is_empty() {
                    Ok(Vec::new())
                } else {
                    sender.send(cmds).await
                };
                let mut results = match results {
                    Ok(r) => r.into_iter().map(Ok).collect::<Vec<_>>().into_iter(),
                    Err(e) => vec![Err(e); sent].into_iter(),
                };
                let mut wake = Vec::new();
                for job in jobs {
                    match job {
                        Job::Call {
                            call,
                            reply,
                            wake: w,
                        } => {
                            let result = flatten(results.next(), &sender.url);
                            match reply {
                                Some(reply) => {
                                    if let Err((result, call)) = reply.send((result, call)) {
                                        // Its waiter is gone (cancelled in flight).
                                        give_back(&requeue, &call, result);
                                    }
                                }
                                None => {
                                    // A leave that fails is no loss: its tickets'
                                    // leases run out.
                                    if let (Err(e), false) = (result, call.op == Op::Leave) {
                                        failed_settles = Some(e.to_string());
                                    }
                                    wake.extend(w);
                                }
                            }
                        }
                        Job::Ping(reply) => {
                            let result = match results.next() {
                                Some(Ok(Ok(_))) => Ok(()),
                                other => flatten(other, &sender.url).map(|_| ()),
                            };
                            let _ = reply.send(result);
                        }
                        Job::Flush(done) => {
                            let _ = done.send(match failed_settles.take() {
                                Some(e) => Err(e),
                                None => Ok(()),
                            });
                        }
                    }
                }
                if !wake.is_empty() {
                    if let Some(inner) = owner.upgrade() {
                        inner.queues.lock().wake_heads(&wake);
                    }
                }
            }
        });
        Pipe { tx }
    }

    /// Queues a call and returns its reply. Dropped before it reads the
    /// reply (its caller cancelled), it undoes what the call did.
    pub(crate) async fn call(&self, call: Call) -> CoreResult<Vec<i64>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Call {
                call: Box::new(call),
                reply: Some(reply),
                wake: Vec::new(),
            })
            .map_err(|_| CoreError::Store("the Redis limiter is closed".into()))?;
        let mut pending = Unread {
            rx,
            requeue: self.tx.clone(),
        };
        match (&mut pending.rx).await {
            Ok((result, _)) => result,
            Err(_) => Err(CoreError::Store("the Redis limiter is closed".into())),
        }
    }

    /// Queues a settle or a refund without waiting for it; `wake` names the
    /// keys whose local waiters a refund frees.
    pub(crate) fn send(&self, call: Call, wake: Vec<Arc<str>>) {
        let _ = self.tx.send(Job::Call {
            call: Box::new(call),
            reply: None,
            wake,
        });
    }

    /// One PING through the same path as every call.
    pub(crate) async fn ping(&self) -> CoreResult<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Ping(reply))
            .map_err(|_| CoreError::Store("the Redis limiter is closed".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(CoreError::Store("the Redis limiter is closed".into())))
    }

    /// Resolves once everything queued before it has reached Redis; an error
    /// tells that some settle or refund since the last flush failed.
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

/// Queues what undoes `call` (a refund or a leave) when its reply, which
/// nobody will read, says it admitted or queued.
fn give_back(requeue: &mpsc::UnboundedSender<Job>, call: &Call, result: CoreResult<Vec<i64>>) {
    let Ok(granted) = result else { return };
    if let Some(undo) = call.undo_of(&granted) {
        let _ = requeue.send(Job::Call {
            call: Box::new(undo),
            reply: None,
            wake: call.keys_named(),
        });
    }
}

/// The receiving end of a call's reply. A reply can arrive after the pipe
/// handed it over but before the caller read it (the caller's future was
/// dropped between the two): dropping this then gives it back, as the pipe
/// does for a reply whose receiver was already gone.
struct Unread {
    rx: oneshot::Receiver<(CoreResult<Vec<i64>>, Box<Call>)>,
    requeue: mpsc::UnboundedSender<Job>,
}

impl Drop for Unread {
    fn drop(&mut self) {
        // Closed first, so that the pipe either sees the receiver gone (and
        // gives back itself) or has already sent what is read here.
        self.rx.close();
        if let Ok((result, call)) = self.rx.try_recv() {
            give_back(&self.requeue, &call, result);
        }
    }
}

/// A call's reply as integers: every reply of the code is a list of
/// numbers, packed as little-endian doubles in one string.
fn flatten(result: Option<Result<RedisResult<Value>, String>>, url: &str) -> CoreResult<Vec<i64>> {
    match result {
        Some(Ok(Ok(Value::BulkString(bytes)))) if bytes.len() % 8 == 0 => Ok(bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as i64)
            .collect()),
        Some(Ok(Ok(reply))) => {
            redis::from_redis_value::<Vec<i64>>(reply).map_err(|e| super::unavailable(url, e))
        }
        Some(Ok(Err(e))) => Err(super::unavailable(url, e)),
        Some(Err(e)) => Err(super::unavailable(url, e)),
        None => Err(super::unavailable(url, "no reply")),
    }
}
