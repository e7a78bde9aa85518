//! The xmppfed operator: reconciles FederationGateway, DomainWhitelist and
//! ThrottlePolicy resources into running gateways.

pub mod crd;
pub mod crdgen;
