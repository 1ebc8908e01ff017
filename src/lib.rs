//! paymongo-gateway: a security gateway between internal services and the
//! PayMongo API.
//!
//! The layout follows the architecture: [`config`] turns `gateway.toml` into
//! checked types; [`outbound`] is the credential-injecting proxy; [`server`]
//! owns sockets and connections; [`reload`] holds the swappable snapshot;
//! [`gateway`] ties listeners to snapshots; [`idempotency`] deduplicates
//! retried writes; [`webhook`] verifies and forwards PayMongo's event
//! deliveries; [`redis_backend`] is the Redis connection both share when
//! several replicas run; [`admin`] and [`metrics`] are the operator's view;
//! [`error`] is the one place errors become responses.

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod idempotency;
pub mod log;
pub mod metrics;
pub mod outbound;
pub mod redis_backend;
pub mod reload;
pub mod server;
pub mod tls;
pub mod webhook;

pub use config::Config;
pub use gateway::Gateway;
