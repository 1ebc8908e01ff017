//! The connection to Redis that the shared-state stores use when
//! `[idempotency] store = "redis"`: the idempotency store
//! ([`crate::idempotency::redis`]) and the webhook event store
//! ([`crate::webhook::redis_events`]) share one [`RedisBackend`], so a
//! replica has one set of connections, one timeout and one readiness answer.
//!
//! Three promises live here:
//!
//! * **Bounded.** Every command, including the wait for a (re)connection,
//!   is cut off after `redis_timeout`, so a dead or partitioned Redis turns
//!   into a fast store error (and `on_store_error` decides), never into a
//!   hung request.
//! * **Self-healing.** Each connection is a `redis` crate
//!   [`ConnectionManager`]: a multiplexed connection that replaces itself
//!   after a connection error. It connects lazily, so the gateway starts
//!   (and proxies, per `on_store_error`) while Redis is down, and it
//!   reconnects on demand, so dedupe resumes when Redis is back, without a
//!   restart.
//! * **Secret-free.** The URL may carry a password. Only `host:port` (or the
//!   socket path) is ever shown; error texts are built from error kinds and
//!   server error codes and scrubbed of the password as a last line.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, FromRedisValue, IntoConnectionInfo, RedisError, ScriptInvocation};
use secrecy::{ExposeSecret, SecretString};

use crate::config::IdempotencyConfig;

/// Why a Redis operation did not produce an answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BackendError {
    /// No answer within `redis_timeout` (Redis slow, partitioned, or the
    /// connection still being re-established).
    #[error("redis {addr}: no answer within {timeout:?}")]
    Timeout {
        /// `host:port` or socket path.
        addr: Arc<str>,
        /// `redis_timeout`.
        timeout: Duration,
    },
    /// Redis refused, the connection failed, or the answer was unusable.
    #[error("redis {addr}: {reason}")]
    Failed {
        /// `host:port` or socket path.
        addr: Arc<str>,
        /// What went wrong, without secrets.
        reason: String,
    },
}

/// A small pool of self-reconnecting multiplexed connections to one Redis.
pub struct RedisBackend {
    conns: Box<[ConnectionManager]>,
    next: AtomicUsize,
    timeout: Duration,
    addr: Arc<str>,
    /// Only used to scrub error texts; never printed.
    password: Option<SecretString>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("addr", &self.addr)
            .field("connections", &self.conns.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisBackend {
    /// Prepares the connections for `cfg.redis_url` without connecting
    /// (that happens on first use, and again after any connection loss).
    /// Fails only for a URL the `redis` crate cannot use; the message names
    /// the problem, never the URL. Call it inside a tokio runtime: each
    /// connection starts a small background task.
    pub fn new(cfg: &IdempotencyConfig) -> Result<Self, String> {
        let url = cfg
            .redis_url
            .as_ref()
            .ok_or_else(|| "redis_url is not set".to_owned())?;
        let info = url
            .expose_secret()
            .into_connection_info()
            .map_err(|e| format!("redis_url is not a usable Redis URL ({:?})", e.kind()))?;
        let addr: Arc<str> = info.addr().to_string().into();
        let password = info
            .redis_settings()
            .password()
            .filter(|p| !p.is_empty())
            .map(|p| SecretString::from(p.to_owned()));
        let client = match &cfg.redis_ca_pem {
            Some(pem) => Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => Client::open(info),
        }
        .map_err(|e| format!("redis {addr}: cannot use this URL ({:?})", e.kind()))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.redis_timeout))
            .set_response_timeout(Some(cfg.redis_timeout))
            // One connection attempt per reconnect: while Redis is down,
            // commands fail at once (a refused connect is instant) instead
            // of queueing behind a retry schedule, and the next command
            // starts the next attempt. Concurrent commands share one attempt.
            .set_number_of_retries(0);
        let n = usize::try_from(cfg.redis_connections.max(1)).unwrap_or(1);
        let conns = (0..n)
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("redis {addr}: cannot set up a connection ({:?})", e.kind()))?;
        Ok(Self {
            conns: conns.into_boxed_slice(),
            next: AtomicUsize::new(0),
            timeout: cfg.redis_timeout,
            addr,
            password,
        })
    }

    /// `host:port` (or the socket path) of the server: safe to log.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `redis_timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The next connection, round-robin. Clones share the connection.
    fn conn(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// Runs one command, bounded by `redis_timeout`.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BackendError> {
        let mut c = self.conn();
        self.bounded(cmd.query_async(&mut c)).await
    }

    /// Runs a Lua script (`EVALSHA`, falling back to loading it after a
    /// Redis restart emptied the script cache), bounded by `redis_timeout`.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, BackendError> {
        let mut c = self.conn();
        self.bounded(script.invoke_async(&mut c)).await
    }

    /// `PING` on every connection at once (readiness): all must answer.
    pub async fn ping(&self) -> Result<(), BackendError> {
        let pings = self.conns.iter().map(|c| {
            let mut c = c.clone();
            async move {
                self.bounded(redis::cmd("PING").query_async::<()>(&mut c))
                    .await
            }
        });
        futures_util::future::join_all(pings)
            .await
            .into_iter()
            .collect()
    }

    async fn bounded<T>(
        &self,
        f: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(BackendError::Failed {
                addr: self.addr.clone(),
                reason: self.describe(&e),
            }),
            Err(_) => Err(BackendError::Timeout {
                addr: self.addr.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// A secret-free description of a Redis error. Server errors are reduced
    /// to their code (`WRONGPASS`, `OOM`, `READONLY`, `NOSCRIPT`...): their
    /// free text is not ours to vouch for.
    fn describe(&self, e: &RedisError) -> String {
        let text = match e.code() {
            Some(code) => format!("server error {code}"),
            None => e.to_string(),
        };
        scrub(text, self.password.as_ref())
    }
}

/// Replaces every occurrence of the password in `text`. Belt and braces:
/// nothing above puts it there, but error texts come from another crate.
fn scrub(text: String, password: Option<&SecretString>) -> String {
    match password.map(ExposeSecret::expose_secret) {
        Some(p) if text.contains(p) => text.replace(p, "[REDACTED]"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> IdempotencyConfig {
        let text = "mode = \"test\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n\
             secret_key = { env = \"SK\" }\n[idempotency]\nstore = \"redis\"\n\
             redis_url = { env = \"REDIS_URL\" }\nredis_timeout = \"200ms\"\n";
        let url = url.to_owned();
        let env = move |k: &str| match k {
            "REDIS_URL" => Some(url.clone()),
            _ => Some("sk_test_unit".to_owned()),
        };
        let ctx = crate::config::LoadContext {
            base_dir: ".".into(),
            env: &env,
        };
        crate::config::Config::parse(text, &ctx)
            .unwrap()
            .idempotency
    }

    #[test]
    fn scrub_removes_the_password() {
        let pw = SecretString::from("hunter2-pw".to_owned());
        assert_eq!(
            scrub("auth hunter2-pw failed".into(), Some(&pw)),
            "auth [REDACTED] failed"
        );
        assert_eq!(scrub("refused".into(), Some(&pw)), "refused");
        assert_eq!(scrub("refused".into(), None), "refused");
    }

    #[tokio::test]
    async fn debug_and_errors_show_host_port_never_the_password() {
        // Port 1 on loopback: nothing listens, the connect is refused.
        let b = RedisBackend::new(&config("redis://:s3cr3t-pw@127.0.0.1:1/0")).unwrap();
        assert_eq!(b.addr(), "127.0.0.1:1");
        let dbg = format!("{b:?}");
        assert!(
            dbg.contains("127.0.0.1:1") && !dbg.contains("s3cr3t"),
            "{dbg}"
        );
        let e = b.ping().await.unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:1"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}
