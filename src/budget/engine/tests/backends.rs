//! The states every engine test runs on: this process's, and a real
//! redis-server started once for the test binary (random port, no
//! persistence). Without `redis-server` on PATH the Redis runs are skipped,
//! unless `USAGEWARDEN_REQUIRE_SERVERS=1` (CI), where that is a failure.

use crate::budget::engine::Engine;
use crate::budget::state::redis::RedisState;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Local,
    Redis,
}

struct Server {
    url: String,
    runtime: tokio::runtime::Runtime,
    _process: ChildGuard,
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> Option<Server> {
    let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(binary) = binary else {
        assert!(
            std::env::var("USAGEWARDEN_REQUIRE_SERVERS").as_deref() != Ok("1"),
            "redis-server is not installed (Debian: apt-get install -y redis-server)"
        );
        eprintln!(
            "redis-server is not installed (Debian: apt-get install -y redis-server): skipped"
        );
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = std::env::temp_dir().join(format!("uw-budget-redis-{port}"));
    std::fs::create_dir_all(&dir).expect("a directory for redis-server");
    let child = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    Some(Server {
        url: format!("redis://127.0.0.1:{port}/0"),
        runtime,
        _process: guard,
    })
}

static SERVER: OnceLock<Option<Server>> = OnceLock::new();
static PREFIXES: AtomicU64 = AtomicU64::new(0);

/// The backends available here.
pub fn all() -> Vec<Backend> {
    match SERVER.get_or_init(start) {
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
                let server = SERVER.get_or_init(start).as_ref().expect("started");
                let prefix = prefix.map(String::from).unwrap_or_else(|| {
                    format!(
                        "t{}-{}",
                        std::process::id(),
                        PREFIXES.fetch_add(1, Ordering::Relaxed)
                    )
                });
                let state = RedisState::connect(
                    &server.url,
                    &prefix,
                    Duration::from_secs(5),
                    server.runtime.handle().clone(),
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
