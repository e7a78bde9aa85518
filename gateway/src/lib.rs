//! The xmppfed gateway: the XMPP server of a Teams-facing domain, bridged to
//! Microsoft Teams through Microsoft Graph.
//!
//! `process` runs it (configuration, telemetry, admin endpoints, the
//! listeners); `s2s` is RFC 6120 federation, `graph` the Microsoft Graph
//! client and webhook, `store` the durable state, `bridge` the Teams ↔ XMPP
//! logic between them; `clock` and `random` are the one clock and the one
//! source of randomness (see docs/architecture.md).

pub mod bridge;
pub mod clock;
pub mod dns;
#[doc(hidden)]
pub mod fuzz;
pub mod graph;
pub mod leadership;
pub mod licence;
pub mod memory;
pub mod pod;
pub mod preflight;
pub mod process;
pub mod random;
pub mod reload;
pub mod s2s;
pub mod sip_route;
pub mod store;
pub mod trust;

pub use xmppfed_config as config;

/// An error and its sources in one line, each said once: most errors here
/// already name their source in their own message, and reqwest's say only
/// "error sending request" with the reason in a source.
pub fn said_once(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let said = cause.to_string();
        if !out.contains(&said) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&said);
        }
        next = cause.source();
    }
    out
}

/// The configuration `xmppfed-gateway sandbox` runs: examples/local/gateway.toml.
pub const SANDBOX_CONFIG: &str = include_str!("../../examples/local/gateway.toml");

#[cfg(test)]
mod tests {
    #[test]
    fn sandbox_config_is_valid_and_local_only() {
        let c = crate::config::GatewayConfig::from_toml_str(super::SANDBOX_CONFIG).unwrap();
        for addr in [c.s2s.listen, c.webhook.listen, c.admin.listen] {
            assert!(addr.ip().is_loopback(), "{addr} is not loopback");
        }
        assert!(c.check_secrets().is_ok());
    }
}
