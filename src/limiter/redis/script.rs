//! How the limiter's Lua code reaches Redis and is called. Where Redis
//! Functions exist (Redis 7), the code is loaded once as a function library:
//! its top level (every helper, the parsed-limits cache) runs at load time,
//! and a call runs only `main` (`FCALL`). Elsewhere (Redis 6, or no
//! permission for `FUNCTION`) the same code is a script called by SHA
//! (`EVALSHA`), whose every call also runs the top level. Either is loaded
//! again when the server has lost it (restart, `SCRIPT FLUSH`, `FUNCTION FLUSH`).

use redis::aio::ConnectionManager;
use redis::{Cmd, RedisError, RedisResult, Script};

/// The version of the layout of the state the library stores, part of every
/// key's name (`<prefix>:v2:<key>`): a version storing another layout uses
/// other keys, so that neither reads what the other wrote.
pub(crate) const LAYOUT: &str = "v2";

/// One library in four files: the windows, the queue of waiters, the common
/// admission, the operations.
const LIBRARY: &str = concat!(
    include_str!("limiter.lua"),
    include_str!("queue.lua"),
    include_str!("fast.lua"),
    include_str!("ops.lua")
);

#[derive(Clone)]
pub(crate) struct LimiterScript {
    /// The code as a script (its last line calls `main`), by SHA.
    script: Script,
    /// The function's name: its code's hash, so that versions sharing a server coexist.
    function: String,
    /// Whether calls go through the function (else through the script).
    functions: bool,
}

impl LimiterScript {
    pub(crate) fn new() -> LimiterScript {
        let script = Script::new(&format!("{LIBRARY}\nreturn main(KEYS, ARGV)\n"));
        let function = format!("usagewarden_limiter_{}", &script.get_hash()[..16]);
        LimiterScript {
            script,
            function,
            functions: true,
        }
    }

    fn library(&self) -> String {
        format!(
            "#!lua name={name}\n{LIBRARY}\nredis.register_function('{name}', main)\n",
            name = self.function
        )
    }

    /// Loads the code: as a function where the server allows, else as a
    /// script (then every later load is of the script).
    pub(crate) async fn load(&mut self, conn: &mut ConnectionManager) -> RedisResult<()> {
        if self.functions {
            let loaded: RedisResult<String> = redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg(self.library())
                .query_async(conn)
                .await;
            match loaded {
                Ok(_) => return Ok(()),
                Err(e) if e.detail().is_some_and(|d| d.contains("already exists")) => return Ok(()),
                Err(e) if functions_unavailable(&e) => self.functions = false,
                Err(e) => return Err(e),
            }
        }
        self.script.prepare_invoke().load_async(conn).await?;
        Ok(())
    }

    /// The command calling the code on `keys`, with room for `args` more
    /// arguments of `bytes` together (one allocation each, not one per growth).
    pub(crate) fn invocation(&self, keys: usize, args: usize, bytes: usize) -> Cmd {
        let name = if self.functions {
            self.function.as_str()
        } else {
            self.script.get_hash()
        };
        let mut cmd = Cmd::with_capacity(args + 3, bytes + name.len() + 16);
        if self.functions {
            cmd.arg("FCALL");
        } else {
            cmd.arg("EVALSHA");
        }
        cmd.arg(name);
        cmd.arg(keys);
        cmd
    }
}

/// The server has neither `FUNCTION` nor a way for this user to use it.
fn functions_unavailable(e: &RedisError) -> bool {
    let detail = e.detail().unwrap_or("").to_ascii_lowercase();
    e.code() == Some("NOPERM")
        || detail.contains("unknown command")
        || detail.contains("unknown subcommand")
}

/// The server does not have the code (it restarted or was flushed): nothing
/// of the call ran, and it can be sent again once the code is loaded.
pub(crate) fn is_missing(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
        || (e.code() == Some("ERR")
            && e.detail()
                .is_some_and(|d| d.starts_with("Function not found")))
}
