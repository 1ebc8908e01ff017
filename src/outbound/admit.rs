//! Admission: which peers may use a service listener.
//!
//! Loopback and Unix-socket listeners admit everyone who can reach them (only
//! this host can). A remote listener admits only peers inside its
//! `allow_from` networks; config loading refuses a remote listener without one.

use super::OutboundError;
use crate::config::ServiceConfig;
use crate::server::Peer;

/// Admits or refuses the peer of a request.
pub fn admit(svc: &ServiceConfig, peer: &Peer) -> Result<(), OutboundError> {
    let Some(nets) = &svc.allow_from else {
        return Ok(());
    };
    match peer {
        Peer::Tcp(addr) if nets.iter().any(|n| n.contains(addr.ip())) => Ok(()),
        _ => Err(OutboundError::PeerNotAllowed),
    }
}
