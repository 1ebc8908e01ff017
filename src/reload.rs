//! Live reload: the immutable [`Snapshot`] of everything reloadable, how a
//! new one is made (read → parse → validate → build → swap), and what
//! triggers it (SIGHUP, or a change in the config's directory or in the
//! directory of any file it references, debounced).
//!
//! A request loads the snapshot once and finishes on it. A reload builds a
//! complete new snapshot and binds any new listener first, and swaps only if
//! every step succeeded; otherwise the running snapshot stays, the reason is
//! logged and `paymongo_gateway_reloads_total{result="failure"}` counts it.
//!
//! Reloadable: services (keys, allowlists, limits, listeners added, removed
//! or moved), upstream settings, idempotency policy, webhook endpoints,
//! secrets and certificates, admin settings, log level. Not reloadable
//! (restart needed, and a reload that changes them says so in a warning):
//! the idempotency store (`store`, `max_memory`, `redis_*`), log format.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::config::{Config, ConfigError, ServiceConfig};
use crate::gateway::{Gateway, StartError};
use crate::metrics::{Metrics, ServiceMetrics};
use crate::outbound::Upstream;
use crate::webhook::WebhookRuntime;

/// Everything a request needs that a reload may change.
#[derive(Debug)]
pub struct Snapshot {
    /// 1 at start, +1 per successful reload.
    pub generation: u64,
    /// The configuration this snapshot was built from.
    pub config: Arc<Config>,
    /// The PayMongo client (reused across reloads when `[upstream]` is unchanged).
    pub upstream: Upstream,
    /// The webhook listener's endpoints, secrets, inward clients and TLS
    /// configuration, when `[webhooks]` is configured.
    pub webhooks: Option<WebhookRuntime>,
    services: HashMap<Arc<str>, ServiceRuntime>,
}

/// One service as the request path sees it.
#[derive(Debug)]
pub struct ServiceRuntime {
    /// Its configuration (key, allowlist, limits).
    pub config: ServiceConfig,
    /// Its pre-resolved metric handles.
    pub metrics: ServiceMetrics,
}

/// Why a snapshot could not be built from a valid configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The upstream TLS client could not be configured.
    #[error("upstream: {0}")]
    Upstream(String),
    /// The webhook listener's TLS or an inward client could not be configured.
    #[error("webhooks: {0}")]
    Webhooks(String),
}

impl Snapshot {
    /// Builds a snapshot, reusing long-lived parts of `previous` where the
    /// configuration for them did not change.
    pub fn build(
        config: Config,
        generation: u64,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
    ) -> Result<Self, BuildError> {
        let upstream = Upstream::build(&config.upstream, previous.map(|p| &p.upstream))
            .map_err(BuildError::Upstream)?;
        let webhooks = config
            .webhooks
            .as_ref()
            .map(|w| WebhookRuntime::build(w, config.mode))
            .transpose()
            .map_err(BuildError::Webhooks)?;
        let services = config
            .services
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    ServiceRuntime {
                        config: s.clone(),
                        metrics: metrics.service(&s.name),
                    },
                )
            })
            .collect();
        Ok(Self {
            generation,
            config: Arc::new(config),
            upstream,
            webhooks,
            services,
        })
    }

    /// The service with this name, if the configuration still has it.
    pub fn service(&self, name: &str) -> Option<&ServiceRuntime> {
        self.services.get(name)
    }
}

/// Why a reload was refused. The running snapshot stays in service.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read or is not a valid configuration.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A runtime part could not be built, or a new listener could not bind.
    #[error(transparent)]
    Apply(#[from] StartError),
}

/// Reloads from `path`. Returns the new generation; on failure the old
/// snapshot keeps serving.
pub async fn reload(gw: &Gateway, path: &Path, trigger: &str) -> Result<u64, ReloadError> {
    let _one_at_a_time = gw.reload_lock.lock().await;
    let result = try_reload(gw, path).await;
    gw.shared().reload_attempted();
    let metrics = &gw.shared().metrics;
    match &result {
        Ok(g) => {
            metrics.reload(true);
            info!(trigger, generation = g, "reloaded");
        }
        Err(e) => {
            metrics.reload(false);
            error!(trigger, error = %e, "reload refused; the previous configuration stays in service");
        }
    }
    result
}

async fn try_reload(gw: &Gateway, path: &Path) -> Result<u64, ReloadError> {
    // Parsing reads secret files and certificates: keep it off the runtime threads.
    let p = path.to_owned();
    let config = tokio::task::spawn_blocking(move || Config::load(&p))
        .await
        .map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            source: std::io::Error::other(e),
        })??;
    let current = gw.snapshot();
    let pending = restart_only_changes(&current.config.idempotency, &config.idempotency);
    if !pending.is_empty() {
        warn!(
            keys = %pending.join(", "),
            "these [idempotency] keys only take effect after a restart; the running store keeps its settings"
        );
    }
    // Rebuilding the filter invalidates every callsite's cached interest
    // (a global re-registration): only do it when the level changed.
    let level = (config.log.level != current.config.log.level).then(|| config.log.level.clone());
    let snap = Snapshot::build(
        config,
        current.generation + 1,
        Some(&current),
        &gw.shared().metrics,
    )
    .map_err(StartError::from)?;
    let generation = snap.generation;
    gw.apply(Some(snap)).await?;
    if let Some(level) = level {
        crate::log::set_level(&level);
    }
    Ok(generation)
}

/// The start-time-only `[idempotency]` keys (the store outlives reloads)
/// that differ between `old` and `new`.
fn restart_only_changes(
    old: &crate::config::IdempotencyConfig,
    new: &crate::config::IdempotencyConfig,
) -> Vec<&'static str> {
    use secrecy::ExposeSecret;
    let url = |c: &crate::config::IdempotencyConfig| {
        c.redis_url.as_ref().map(|u| u.expose_secret().to_owned())
    };
    [
        ("store", old.store != new.store),
        ("max_memory", old.max_memory != new.max_memory),
        ("redis_url", url(old) != url(new)),
        ("redis_timeout", old.redis_timeout != new.redis_timeout),
        (
            "redis_connections",
            old.redis_connections != new.redis_connections,
        ),
        ("redis_ca_file", old.redis_ca_pem != new.redis_ca_pem),
        ("redis_cache", old.redis_cache != new.redis_cache),
    ]
    .into_iter()
    .filter_map(|(k, changed)| changed.then_some(k))
    .collect()
}

/// How long the watcher waits for a burst of file events to settle.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches the config's directory (so editor renames and Kubernetes'
/// `..data` symlink swaps are seen) and the directories of every file it
/// references, and reloads after changes settle. Runs until the gateway is
/// dropped or the watcher fails to start.
pub fn spawn_watcher(
    gw: Arc<Gateway>,
    path: PathBuf,
) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Event>();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                let _ = tx.send(ev);
            }
            Err(e) => warn!(error = %e, "config watcher error"),
        })?;
    let mut watched: HashSet<PathBuf> = HashSet::new();
    let mut files = watched_files(&path, &gw.snapshot().config);
    rewatch(&mut watcher, &mut watched, &files);
    Ok(tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if !relevant(&ev, &files) {
                continue;
            }
            // Debounce: keep absorbing events until the directory is quiet.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            debug!("config change detected");
            if reload(&gw, &path, "file change").await.is_ok() {
                files = watched_files(&path, &gw.snapshot().config);
                rewatch(&mut watcher, &mut watched, &files);
            }
        }
    }))
}

fn watched_files(config_path: &Path, config: &Config) -> HashSet<PathBuf> {
    let mut files: HashSet<PathBuf> = config.files.iter().cloned().collect();
    files.insert(config_path.to_owned());
    files
}

fn dir_of(p: &Path) -> PathBuf {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn rewatch(
    w: &mut notify::RecommendedWatcher,
    watched: &mut HashSet<PathBuf>,
    files: &HashSet<PathBuf>,
) {
    let dirs: HashSet<PathBuf> = files.iter().map(|f| dir_of(f)).collect();
    for d in watched.difference(&dirs) {
        let _ = w.unwatch(d);
    }
    for d in dirs.difference(watched) {
        if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
            warn!(dir = %d.display(), error = %e, "cannot watch directory for config changes");
        }
    }
    *watched = dirs;
}

/// An event touching one of our files by name, or a Kubernetes atomic
/// writer's `..data` swap. Reads (access events) never count.
fn relevant(ev: &notify::Event, files: &HashSet<PathBuf>) -> bool {
    if matches!(ev.kind, notify::EventKind::Access(_)) {
        return false;
    }
    let names: HashSet<&std::ffi::OsStr> = files.iter().filter_map(|f| f.file_name()).collect();
    ev.paths.iter().any(|p| {
        p.file_name()
            .is_some_and(|n| names.contains(n) || n.to_string_lossy().starts_with(".."))
    })
}
