//! Harnesses for end-to-end tests: an in-test OTLP receiver, a runner for the
//! project's binaries, and a Prometheus text parser. Real XMPP peers and the
//! Graph emulator join here as they are built.

pub mod daemon;
pub mod ejabberd;
pub mod graph;
pub mod kube_api;
pub mod metrics;
pub mod otlp;
pub mod prosody;
pub mod xmpp_client;
pub mod xmpp_peer;
