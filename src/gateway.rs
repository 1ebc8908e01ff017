//! The running gateway: process-lifetime state ([`Shared`]), the set of
//! listeners, and reconciling that set with a configuration (at start and on
//! reload). Graceful shutdown lives here too.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, watch};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::AdminHandler;
use crate::config::{Config, IdempotencyConfig, ListenAddr, StoreKind, listeners_clash as clash};
use crate::idempotency::{IdempotencyStore, MemoryStore, RedisStore, StoreError};
use crate::metrics::{Metrics, StoreErrors};
use crate::outbound::OutboundHandler;
use crate::redis_backend::RedisBackend;
use crate::reload::{BuildError, Snapshot};
use crate::server::{self, Bound, BoundAddr, Listener, ServeOptions, TlsSource};
use crate::webhook::WebhookHandler;
use crate::webhook::dedupe::{EventStore, MemoryEventStore};
use crate::webhook::redis_events::RedisEventStore;

/// State that lives as long as the process and survives reloads.
pub struct Shared {
    state: ArcSwap<Snapshot>,
    generation: watch::Sender<u64>,
    reload_attempts: watch::Sender<u64>,
    /// Every metric.
    pub metrics: Metrics,
    /// Work that must finish even if the request that started it is gone
    /// (an idempotent call whose client hung up); shutdown waits for it.
    pub tasks: TaskTracker,
    /// The last readiness probe, reused for `admin.probe_interval`.
    pub(crate) readiness: Mutex<Option<crate::admin::Readiness>>,
    /// Webhook events delivered or being delivered; outlives reloads so a
    /// reload never causes a duplicate inward delivery.
    pub events: Arc<dyn EventStore>,
    /// Idempotency claims and records. Built once from the first
    /// configuration (`store`, `max_memory`, `redis_*`): records survive reloads.
    pub idempotency: Arc<dyn IdempotencyStore>,
}

/// The idempotency store and the webhook event store, built together.
pub type StateStores = (Arc<dyn IdempotencyStore>, Arc<dyn EventStore>);

/// The process-lifetime state stores for `cfg.store`: both in this process,
/// or both on one Redis (one set of connections, one readiness answer).
/// Redis is not contacted here: see [`RedisBackend`].
pub fn build_stores(
    cfg: &IdempotencyConfig,
    errors: StoreErrors,
) -> Result<StateStores, StoreError> {
    Ok(match cfg.store {
        StoreKind::Memory => (
            Arc::new(MemoryStore::new(cfg.max_memory)),
            Arc::new(MemoryEventStore::new()),
        ),
        StoreKind::Redis => {
            let backend = Arc::new(RedisBackend::new(cfg).map_err(StoreError::Unavailable)?);
            (
                Arc::new(RedisStore::new(
                    backend.clone(),
                    cfg.redis_cache,
                    errors.clone(),
                )),
                Arc::new(RedisEventStore::new(backend, errors)),
            )
        }
    })
}

impl Shared {
    /// The current snapshot. Load it once per request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.load_full()
    }

    /// Follows the configuration generation (1 at start, +1 per reload).
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Counts finished reload attempts, successful or not.
    pub fn reload_attempts(&self) -> watch::Receiver<u64> {
        self.reload_attempts.subscribe()
    }

    pub(crate) fn reload_attempted(&self) {
        self.reload_attempts.send_modify(|n| *n += 1);
    }

    /// Whether the shared state stores (idempotency records, seen events) answer.
    pub(crate) async fn store_ready(&self) -> Result<(), String> {
        let (idem, events) = tokio::join!(self.idempotency.ping(), self.events.ping());
        // Each error names its store and where it lives (`redis host:port`).
        let problems: Vec<String> = [
            idem.err().map(|e| e.to_string()),
            events.err().map(|e| format!("webhook {e}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Says at start whether the shared store answers. An unreachable Redis
    /// does not stop the gateway: `on_store_error` decides what requests
    /// get, `/readyz` reports it, and the connection heals when Redis is back.
    async fn check_store_at_start(&self) {
        if self.idempotency.kind() == "memory" {
            return;
        }
        match self.idempotency.ping().await {
            Ok(()) => info!(
                store = self.idempotency.kind(),
                "shared state store reachable"
            ),
            Err(e) => warn!(
                store = self.idempotency.kind(),
                error = %e,
                "shared state store unreachable at start; serving anyway per on_store_error"
            ),
        }
    }

    pub(crate) fn publish(&self, snap: Snapshot) {
        let g = snap.generation;
        self.metrics.set_generation(g);
        self.state.store(Arc::new(snap));
        self.generation.send_replace(g);
    }
}

/// Which listener this is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenerId {
    /// The listener of one `[[service]]`.
    Service(Arc<str>),
    /// `[admin]`.
    Admin,
    /// `[webhooks]`. Whether it terminates TLS is part of its identity, so
    /// a reload that toggles `plaintext` replaces the listener instead of
    /// leaving it in the old mode.
    Webhooks {
        /// HTTPS (`false` only with `plaintext = true`).
        tls: bool,
    },
}

impl std::fmt::Display for ListenerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenerId::Service(n) => write!(f, "service {n}"),
            ListenerId::Admin => f.write_str("admin"),
            ListenerId::Webhooks { .. } => f.write_str("webhooks"),
        }
    }
}

/// Why the gateway could not start (or a reload could not apply).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A runtime part could not be built from the configuration.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The idempotency store could not be built.
    #[error("idempotency: {0}")]
    Store(#[from] StoreError),
    /// The gateway is shutting down; nothing new is applied.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// A listener could not bind.
    #[error("{listener}: cannot listen on {addr}: {source}")]
    Bind {
        /// Which listener.
        listener: ListenerId,
        /// The address.
        addr: ListenAddr,
        /// Why.
        source: io::Error,
    },
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    listeners: Mutex<HashMap<ListenerId, (ListenAddr, Listener)>>,
    /// One reload at a time: load, build and apply happen under it.
    pub(crate) reload_lock: Mutex<()>,
    /// Set once shutdown begins; `apply` refuses from then on.
    stopping: AtomicBool,
}

impl Gateway {
    /// Builds the first snapshot, binds every listener and starts serving.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        crate::tls::install_crypto_provider();
        let metrics = Metrics::new();
        let snap = Snapshot::build(config, 1, None, &metrics)?;
        metrics.set_generation(snap.generation);
        let generation = watch::channel(snap.generation).0;
        let (idempotency, events) = build_stores(&snap.config.idempotency, metrics.store_errors())?;
        let shared = Arc::new(Shared {
            state: ArcSwap::from_pointee(snap),
            generation,
            reload_attempts: watch::channel(0).0,
            metrics,
            tasks: TaskTracker::new(),
            readiness: Mutex::new(None),
            events,
            idempotency,
        });
        shared.check_store_at_start().await;
        let gw = Gateway {
            shared,
            listeners: Mutex::new(HashMap::new()),
            reload_lock: Mutex::new(()),
            stopping: AtomicBool::new(false),
        };
        gw.apply(None).await?;
        Ok(gw)
    }

    /// Process-lifetime state (tests and the reloader use it).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// Where a listener is bound.
    pub async fn addr(&self, id: &ListenerId) -> Option<BoundAddr> {
        self.listeners
            .lock()
            .await
            .get(id)
            .map(|(_, l)| l.addr().clone())
    }

    /// Where service `name` listens.
    pub async fn service_addr(&self, name: &str) -> Option<BoundAddr> {
        self.addr(&ListenerId::Service(name.into())).await
    }

    /// Where the webhook listener is bound, whichever transport it uses.
    pub async fn webhooks_addr(&self) -> Option<BoundAddr> {
        let listeners = self.listeners.lock().await;
        [true, false].into_iter().find_map(|tls| {
            listeners
                .get(&ListenerId::Webhooks { tls })
                .map(|(_, l)| l.addr().clone())
        })
    }

    /// Binds listeners new in `next`, publishes it, then stops listeners it
    /// no longer has. A bind failure leaves the running state untouched.
    /// `None` reconciles the listeners with the snapshot already published.
    pub(crate) async fn apply(&self, next: Option<Snapshot>) -> Result<(), StartError> {
        let mut listeners = self.listeners.lock().await;
        if self.stopping.load(Ordering::SeqCst) {
            return Err(StartError::ShuttingDown);
        }
        let config = next.as_ref().map_or_else(
            || self.shared.snapshot().config.clone(),
            |s| s.config.clone(),
        );
        let desired = desired_listeners(&config);
        let drain = config.drain_timeout;

        // Listeners that go away or move. Their sockets are closed before new
        // binds only when a new listener needs an address they hold (the same
        // one, or the same port with a wildcard on either side).
        let mut leaving: Vec<ListenerId> = listeners
            .iter()
            .filter(|(id, (addr, _))| desired.get(*id) != Some(addr))
            .map(|(id, _)| id.clone())
            .collect();
        let held_by_leaving =
            |addr: &ListenAddr, ls: &HashMap<ListenerId, (ListenAddr, Listener)>| {
                leaving
                    .iter()
                    .any(|id| ls.get(id).is_some_and(|(a, _)| clash(a, addr)))
            };

        let mut bound: Vec<(ListenerId, ListenAddr, Bound)> = Vec::new();
        let mut handover: Vec<(ListenerId, ListenAddr)> = Vec::new();
        for (id, addr) in &desired {
            if listeners.get(id).is_some_and(|(a, _)| a == addr) {
                continue;
            }
            if held_by_leaving(addr, &listeners) {
                handover.push((id.clone(), addr.clone()));
                continue;
            }
            match server::bind(addr).await {
                Ok(b) => bound.push((id.clone(), addr.clone(), b)),
                Err(source) => {
                    return Err(StartError::Bind {
                        listener: id.clone(),
                        addr: addr.clone(),
                        source,
                    });
                }
            }
        }

        if let Some(snap) = next {
            info!(generation = snap.generation, "configuration applied");
            self.shared.publish(snap);
        }

        // Stop listeners whose address a new listener takes over, then bind it.
        let mut stopping = Vec::new();
        for (id, addr) in handover {
            if let Some(pos) = leaving
                .iter()
                .position(|l| listeners.get(l).is_some_and(|(a, _)| clash(a, &addr)))
            {
                let old = leaving.swap_remove(pos);
                if let Some((_, l)) = listeners.remove(&old) {
                    let (closed, task) = stop_in_background(l, drain);
                    let _ = closed.await;
                    stopping.push(task);
                }
            }
            match server::bind(&addr).await {
                Ok(b) => bound.push((id, addr, b)),
                Err(e) => {
                    error!(listener = %id, addr = %addr, error = %e, "cannot take over address")
                }
            }
        }
        for (id, addr, b) in bound {
            match self.serve(&id, b) {
                Ok(l) => {
                    listeners.insert(id, (addr, l));
                }
                Err(e) => error!(listener = %id, error = %e, "cannot start listener"),
            }
        }
        for id in leaving {
            if let Some((_, l)) = listeners.remove(&id) {
                info!(listener = %id, "removing listener");
                stopping.push(stop_in_background(l, drain).1);
            }
        }
        drop(stopping);
        Ok(())
    }

    fn serve(&self, id: &ListenerId, bound: Bound) -> io::Result<Listener> {
        let opts = ServeOptions::plain(id.to_string());
        match id {
            ListenerId::Service(name) => {
                let mut opts = opts;
                let (shared, svc) = (self.shared.clone(), name.clone());
                // Read per connection from the current snapshot: allow_from reloads.
                opts.admit = Some(Arc::new(move |ip| {
                    shared.snapshot().service(&svc).is_some_and(|s| {
                        s.config
                            .allow_from
                            .as_ref()
                            .is_none_or(|nets| nets.iter().any(|n| n.contains(ip)))
                    })
                }));
                server::serve(
                    bound,
                    OutboundHandler::new(name.clone(), self.shared.clone()),
                    opts,
                )
            }
            ListenerId::Admin => {
                let mut opts = opts;
                let shared = self.shared.clone();
                opts.admit = Some(Arc::new(move |ip| {
                    shared
                        .snapshot()
                        .config
                        .admin
                        .allow_from
                        .as_ref()
                        .is_none_or(|nets| nets.iter().any(|n| n.contains(ip)))
                }));
                server::serve(bound, AdminHandler::new(self.shared.clone()), opts)
            }
            ListenerId::Webhooks { tls } => {
                let snap = self.shared.snapshot();
                let mut opts = opts;
                // PayMongo speaks HTTP/1.1, and TLS only offers it; refuse an
                // h2 preface on the plaintext variant too.
                opts.http1_only = true;
                // It faces the internet: a slow client may not hold a
                // connection open indefinitely before sending its head.
                if let Some(rt) = &snap.webhooks {
                    opts.header_timeout = rt.read_timeout;
                    if rt.has_untimed_scheme() {
                        warn!(
                            listener = "webhooks",
                            "an endpoint uses signature = \"hmac-hex\", which has no timestamp: \
                             replays are only caught by event-id dedupe (dedupe_ttl)"
                        );
                    }
                }
                if *tls {
                    opts.tls = Some(webhook_tls(self.shared.clone()));
                } else {
                    warn!(
                        listener = "webhooks",
                        "plaintext = true: webhooks are received over plain HTTP; \
                         only safe behind a load balancer that terminates TLS"
                    );
                }
                server::serve(bound, WebhookHandler::new(self.shared.clone()), opts)
            }
        }
    }

    /// Stops accepting on every listener, waits up to `drain_timeout` (one
    /// deadline for everything) for in-flight requests and detached upstream
    /// calls, then returns. A reload racing the shutdown is refused: it
    /// would otherwise bind listeners again after they were drained.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _no_reload = self.reload_lock.lock().await;
        let drain = self.shared.snapshot().config.drain_timeout;
        let deadline = tokio::time::Instant::now() + drain;
        let all: Vec<Listener> = self
            .listeners
            .lock()
            .await
            .drain()
            .map(|(_, (_, l))| l)
            .collect();
        info!(listeners = all.len(), ?drain, "shutting down");
        let stops = all.into_iter().map(|l| l.shutdown(drain));
        futures_util::future::join_all(stops).await;
        self.shared.tasks.close();
        if tokio::time::timeout_at(deadline, self.shared.tasks.wait())
            .await
            .is_err()
        {
            error!("shutdown: detached upstream calls still running at the drain deadline");
        }
        info!("shutdown complete");
    }
}

/// The webhook listener's TLS configuration, read from the snapshot current
/// at each handshake so a reload's new certificate applies to new connections.
/// `None` (webhooks removed, or switched to plaintext) refuses the handshake.
fn webhook_tls(shared: Arc<Shared>) -> TlsSource {
    Arc::new(move || {
        shared
            .snapshot()
            .webhooks
            .as_ref()
            .and_then(|w| w.tls.clone())
    })
}

/// Starts stopping a listener: the first handle resolves once its socket is
/// closed, the second when it has drained.
fn stop_in_background(
    l: Listener,
    drain: Duration,
) -> (
    tokio::sync::oneshot::Receiver<()>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        l.shutdown_notify(drain, tx).await;
    });
    (rx, task)
}

fn desired_listeners(c: &Config) -> HashMap<ListenerId, ListenAddr> {
    let mut m: HashMap<ListenerId, ListenAddr> = c
        .services
        .iter()
        .map(|s| (ListenerId::Service(s.name.clone()), s.listen.clone()))
        .collect();
    m.insert(ListenerId::Admin, c.admin.listen.clone());
    if let Some(w) = &c.webhooks {
        m.insert(
            ListenerId::Webhooks {
                tls: w.tls.is_some(),
            },
            w.listen.clone(),
        );
    }
    m
}
