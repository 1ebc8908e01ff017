//! The reloadable state: one immutable [`Snapshot`] built from a validated
//! [`Config`], published through an `ArcSwap`. A request loads the snapshot
//! once and finishes on it; a reload builds a complete new snapshot first
//! and swaps it in only if every step succeeded.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ServiceConfig};
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
