//! Waiters of other processes wake at once when capacity comes back: the
//! script publishes the key of every refund and reset on the prefix's
//! channel, and each limiter listens there and wakes its local heads.
//! Without this, a waiter would still wake at its exact `retry_after`.

use super::RedisInner;
use futures_util::StreamExt;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::runtime::Handle;

/// Listens on `channel` until the limiter is gone, reconnecting with backoff.
pub(crate) fn listen(
    runtime: &Handle,
    client: redis::Client,
    channel: Arc<str>,
    owner: Weak<RedisInner>,
) {
    runtime.spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            if owner.strong_count() == 0 {
                return;
            }
            if let Ok(mut pubsub) = client.get_async_pubsub().await {
                if pubsub.subscribe(&*channel).await.is_ok() {
                    backoff = Duration::from_millis(50);
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        let Some(inner) = owner.upgrade() else {
                            return;
                        };
                        let Ok(redis_key) = message.get_payload::<String>() else {
                            continue;
                        };
                        if let Some(key) = inner.key_of(&redis_key) {
                            inner.queues.lock().wake_heads(&[Arc::from(key)]);
                        }
                    }
                }
            }
            // The connection dropped (a restart, a failover): waiters still wake
            // at their retry_after meanwhile.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
}
