//! The xmppfed operator: reconciles FederationGateway, DomainWhitelist and
//! ThrottlePolicy resources into running gateways.
//!
//! The reconcile pipeline is fetch → validate → build → apply → status; the
//! middle steps are pure (`policy`, `build`, `plan`) and tested without a server.

pub mod build;
pub mod crd;
pub mod crdgen;
pub mod leader;
pub mod licensing;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod status;
