//! The states every engine test runs on: this process's, and the test
//! binary's redis-server (`crate::test_redis`).

use crate::budget::engine::Engine;
use crate::budget::state::redis::RedisState;
use crate::test_redis;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Local,
    Redis,
}

/// The backends available here.
pub fn all() -> Vec<Backend> {
    match test_redis::server() {
        Some(_) => vec![Backend::Local, Backend::Redis],
        None => vec![Backend::Local],
    }
}

impl Backend {
    /// `engine` on this backend; each Redis engine gets a prefix of its own
    /// unless `prefix` names one to share (two hosts on one server).
    pub fn apply(self, engine: Engine, prefix: Option<&str>) -> Engine {
        match self {
            Backend::Local => engine,
            Backend::Redis => {
                let server = test_redis::server().expect("started");
                let prefix = prefix
                    .map(String::from)
                    .unwrap_or_else(test_redis::fresh_prefix);
                let state = RedisState::connect(
                    &server.url,
                    &prefix,
                    Duration::from_secs(5),
                    server.runtime(),
                )
                .expect("connects");
                engine.with_state(Arc::new(state))
            }
        }
    }
}

impl Engine {
    /// This engine on `backend` (its own prefix).
    pub fn apply_to(self, backend: Backend) -> Engine {
        backend.apply(self, None)
    }
}
