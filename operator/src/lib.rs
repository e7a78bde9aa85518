//! The xmppfed operator: reconciles FederationGateway, DomainWhitelist and
//! ThrottlePolicy resources into running gateways.
//!
//! The reconcile pipeline is fetch → validate → render → apply → status; the
//! middle steps are pure (`policy`, `render`, `plan`, `licensing`, `status`)
//! and tested without a server; `reconcile` does the I/O around them, one
//! file per step (`fetch`, `apply`, `report`) with the controllers in `run`.

pub mod crd;
pub mod crdgen;
pub mod leader;
pub mod licensing;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod render;
pub mod status;
