//! Running the gateway under test: in-process (`start_gateway`) from config
//! text, or as the real binary (`GatewayProcess`) with its output captured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paymongo_gateway::Gateway;
use paymongo_gateway::config::{Config, LoadContext};
use paymongo_gateway::gateway::ListenerId;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use super::ca::{Leaf, TestCa};
use super::upstream::FakeUpstream;

/// Upper bound for anything a test waits on; reaching it is a failure.
pub const WAIT: Duration = Duration::from_secs(30);

/// `mode`, `[upstream]` pointing at the fake (trusting `ca_file`), an
/// ephemeral admin port and JSON logs. Services are appended by the test.
pub fn base_config(upstream_port: u16, ca_file: &Path) -> String {
    format!(
        r#"mode = "test"
drain_timeout = "10s"

[upstream]
url = "https://localhost:{upstream_port}"
ca_file = "{ca}"
connect_timeout = "2s"
timeout = "5s"

[admin]
listen = "127.0.0.1:0"

[log]
format = "json"
level = "debug"
"#,
        ca = ca_file.display()
    )
}

/// A CA, a fake PayMongo with a `localhost` certificate from it, and a temp
/// directory holding `ca.pem`.
pub struct Harness {
    pub ca: TestCa,
    pub leaf: Leaf,
    pub upstream: FakeUpstream,
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
}

impl Harness {
    pub async fn new() -> Self {
        paymongo_gateway::tls::install_crypto_provider();
        let ca = TestCa::new("test CA");
        let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
        let upstream = FakeUpstream::start(&leaf).await;
        let dir = tempfile::tempdir().unwrap();
        let ca_file = ca.write_pem(dir.path(), "ca.pem");
        Self {
            ca,
            leaf,
            upstream,
            dir,
            ca_file,
        }
    }

    /// Base config for this harness's upstream plus `extra`.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "{}\n{extra}",
            base_config(self.upstream.port(), &self.ca_file)
        )
    }

    /// Writes a secret file in the temp dir and returns its path.
    pub fn secret_file(&self, name: &str, value: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("{value}\n")).unwrap();
        p
    }

    /// Starts a gateway in-process with `extra` appended to the base config.
    pub async fn gateway(&self, extra: &str, env: &[(&str, &str)]) -> TestGateway {
        start_gateway(&self.config(extra), self.dir.path(), env).await
    }
}

pub struct TestGateway {
    pub gw: Gateway,
}

impl TestGateway {
    pub async fn addr(&self, service: &str) -> SocketAddr {
        self.gw.service_addr(service).await.unwrap().tcp().unwrap()
    }

    pub async fn admin(&self) -> SocketAddr {
        self.gw
            .addr(&ListenerId::Admin)
            .await
            .unwrap()
            .tcp()
            .unwrap()
    }
}

/// Parses `toml` (relative paths from `dir`, `{ env }` from `env`) and starts it.
pub async fn start_gateway(toml: &str, dir: &Path, env: &[(&str, &str)]) -> TestGateway {
    let vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let config = Config::parse(
        toml,
        &LoadContext {
            base_dir: dir.to_owned(),
            env: &lookup,
        },
    )
    .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    let gw = Gateway::start(config).await.unwrap();
    TestGateway { gw }
}

/// The real binary, with stdout and stderr captured line by line.
pub struct GatewayProcess {
    pub child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    count: watch::Receiver<usize>,
}

impl GatewayProcess {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_paymongo-gateway"));
        cmd.args(args)
            .env_remove("RUST_LOG")
            .env_remove("PAYMONGO_GATEWAY_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, count) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for reader in [
            Box::pin(BufReader::new(out)) as std::pin::Pin<Box<dyn tokio::io::AsyncBufRead + Send>>,
            Box::pin(BufReader::new(err)),
        ] {
            let lines = lines.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = reader.lines();
                while let Ok(Some(l)) = r.next_line().await {
                    lines.lock().unwrap().push(l);
                    tx.send_modify(|c| *c += 1);
                }
            });
        }
        Self {
            child,
            lines,
            count,
        }
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits (bounded by [`WAIT`]) for a line matching `pred` and returns it.
    pub async fn wait_for_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let lines = self.lines.clone();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(l) = lines.lock().unwrap().iter().find(|l| pred(l)) {
                    return l.clone();
                }
                if self.count.changed().await.is_err() {
                    panic!(
                        "process output ended without the expected line:\n{}",
                        lines.lock().unwrap().join("\n")
                    );
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("timed out waiting for a line; output:\n{}", self.output()))
    }

    /// The address a listener reported in its JSON `listening` line.
    pub async fn listening(&mut self, listener: &str) -> SocketAddr {
        let want = listener.to_owned();
        let line = self
            .wait_for_line(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|v| v["message"] == "listening" && v["listener"] == want.as_str())
            })
            .await;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["addr"].as_str().unwrap().parse().unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid} failed");
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("process did not exit; output:\n{}", self.output()))
            .unwrap()
    }
}
