//! A real redis-server for the Rust tests, started once per test binary
//! (random port, no persistence). Without `redis-server` on PATH the Redis
//! cases are skipped, unless `USAGEWARDEN_REQUIRE_SERVERS=1` (CI), where
//! that is a failure.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

pub struct Server {
    pub url: String,
    runtime: tokio::runtime::Runtime,
    _process: ChildGuard,
}

impl Server {
    /// The runtime the tests' Redis connections run on.
    pub fn runtime(&self) -> Handle {
        self.runtime.handle().clone()
    }
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
    let dir = std::env::temp_dir().join(format!("uw-rust-redis-{port}"));
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

/// The server, or `None` when redis-server is not installed.
pub fn server() -> Option<&'static Server> {
    SERVER.get_or_init(start).as_ref()
}

/// A key prefix no other test uses.
pub fn fresh_prefix() -> String {
    format!(
        "t{}-{}",
        std::process::id(),
        PREFIXES.fetch_add(1, Ordering::Relaxed)
    )
}
