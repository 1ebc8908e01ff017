//! Redis for tests. Two kinds:
//!
//! * the **shared** server CI starts (`PAYMONGO_GATEWAY_TEST_REDIS_URL`):
//!   tests use keys of their own (random ids) and never stop or flush it;
//! * a **private** `redis-server` a test starts on a free loopback port and
//!   may stop and restart on that same port (outage tests). The binary is
//!   `PAYMONGO_GATEWAY_TEST_REDIS_SERVER`, else `redis-server` on `PATH`.
//!
//! Redis tests run when the URL is set or `PAYMONGO_GATEWAY_TEST_REDIS_REQUIRED=1`.
//! With `REQUIRED=1` a missing URL or binary is a failure, never a skip;
//! without it the test prints why it skipped and passes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::gw::WAIT;

pub const URL_VAR: &str = "PAYMONGO_GATEWAY_TEST_REDIS_URL";
pub const REQUIRED_VAR: &str = "PAYMONGO_GATEWAY_TEST_REDIS_REQUIRED";
pub const SERVER_VAR: &str = "PAYMONGO_GATEWAY_TEST_REDIS_SERVER";

fn required() -> bool {
    std::env::var(REQUIRED_VAR).is_ok_and(|v| v == "1")
}

fn skip(test: &str, why: &str) {
    use std::io::Write;
    // Straight to stderr: the test harness captures `eprintln!` of passing
    // tests, and a skip should be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {why}. Set {URL_VAR} (and {SERVER_VAR}) to run it; \
         {REQUIRED_VAR}=1 makes this a failure (CI sets it)."
    );
}

/// The shared Redis URL; `None` means skip (a message is printed). Panics
/// when Redis is required.
pub fn shared_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(u) if !u.is_empty() => Some(u),
        _ if required() => panic!("{REQUIRED_VAR}=1 but {URL_VAR} is not set"),
        _ => {
            skip(test, &format!("{URL_VAR} is not set"));
            None
        }
    }
}

/// The `redis-server` binary for private servers; `None` means skip.
/// Panics when Redis is required and there is none.
pub fn server_binary(test: &str) -> Option<PathBuf> {
    if std::env::var(URL_VAR).is_err() && !required() {
        skip(test, &format!("{URL_VAR} is not set"));
        return None;
    }
    let from_env = std::env::var(SERVER_VAR).ok().filter(|s| !s.is_empty());
    let found = from_env.map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("redis-server"))
                .find(|p| p.is_file())
        })
    });
    match found {
        Some(p) => Some(p),
        None if required() => {
            panic!(
                "{REQUIRED_VAR}=1 but there is no redis-server ({SERVER_VAR} unset, none on PATH)"
            )
        }
        None => {
            skip(test, "no redis-server binary");
            None
        }
    }
}

/// A string no other test or run uses: for idempotency keys and event ids
/// on the shared server.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}{nanos:x}{:x}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free loopback port, chosen by the kernel. The socket is closed before
/// redis-server binds the port; a collision in between makes redis-server
/// exit with "Address already in use", which [`RedisServer::start`] reports.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// TLS files for a private server.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A private redis-server: persistence off, loopback only.
pub struct RedisServer {
    bin: PathBuf,
    pub port: u16,
    dir: tempfile::TempDir,
    tls: Option<TlsFiles>,
    password: Option<String>,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl RedisServer {
    /// Starts on a free port and waits (bounded) until it accepts connections.
    pub async fn start(bin: &Path) -> Self {
        Self::start_with(bin, None, None).await
    }

    /// Starts with TLS only (no plain port) and/or `requirepass`.
    pub async fn start_with(bin: &Path, tls: Option<TlsFiles>, password: Option<&str>) -> Self {
        let mut s = Self {
            bin: bin.to_owned(),
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            tls,
            password: password.map(str::to_owned),
            child: None,
            log: Arc::default(),
        };
        s.launch().await;
        s
    }

    /// `redis://127.0.0.1:PORT` (or `rediss://localhost:PORT` with TLS).
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("rediss://localhost:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    async fn launch(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "notice", "--logfile", ""])
            .arg("--dir")
            .arg(self.dir.path());
        match &self.tls {
            Some(t) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&t.cert)
                    .arg("--tls-key-file")
                    .arg(&t.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&t.ca)
                    .args(["--tls-auth-clients", "no"]);
            }
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
        }
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let (ready_tx, mut ready) = watch::channel(false);
        let ready_tx = Arc::new(ready_tx);
        let (done_tx, mut done) = watch::channel(0u8);
        let done_tx = Arc::new(done_tx);
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, ready_tx, done_tx) = (self.log.clone(), ready_tx.clone(), done_tx.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if l.contains("Ready to accept connections") {
                        ready_tx.send_replace(true);
                    }
                    log.lock().unwrap().push(l);
                }
                done_tx.send_modify(|n| *n += 1);
            });
        }
        let up = tokio::time::timeout(WAIT, async {
            tokio::select! {
                r = ready.wait_for(|r| *r) => r.is_ok(),
                _ = done.wait_for(|n| *n == 2) => false,
            }
        })
        .await;
        if up != Ok(true) {
            panic!(
                "redis-server on port {} did not become ready:\n{}",
                self.port,
                self.log.lock().unwrap().join("\n")
            );
        }
        self.child = Some(child);
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.start_kill().unwrap();
            tokio::time::timeout(WAIT, c.wait())
                .await
                .expect("redis-server did not exit")
                .unwrap();
        }
    }

    /// Starts it again on the same port, empty (no persistence).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }
}

/// A plain connection to `url` for looking at what the gateway stored.
pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    tokio::time::timeout(WAIT, client.get_multiplexed_async_connection())
        .await
        .expect("redis connect timed out")
        .unwrap()
}

/// Runs `f` until it returns `Some`, at most [`WAIT`], pausing `step`
/// between tries: for conditions only observable by asking (readiness).
pub async fn eventually<T, F, Fut>(step: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(step).await;
        }
    })
    .await
    .expect("condition not reached in time")
}
