//! Harnesses for end-to-end tests: an in-test OTLP receiver, a runner for the
//! project's binaries, and a Prometheus text parser. Real XMPP peers, a
//! throw-away PostgreSQL and the Graph emulator join here as they are built.

pub mod access_edge;
pub mod cluster;
pub mod daemon;
pub mod ejabberd;
pub mod graph;
pub mod kamailio;
pub mod kube_api;
pub mod metrics;
pub mod otlp;
pub mod postgres;
pub mod prosody;
pub mod xmpp_client;
pub mod xmpp_peer;

/// This process's resident memory in bytes, for benchmarks' memory figures
/// (0 where /proc is not there).
pub fn rss_bytes() -> u64 {
    rss_of("self")
}

/// The resident memory of process `pid` in bytes (0 where /proc is not there).
pub fn rss_bytes_of(pid: u32) -> u64 {
    rss_of(&pid.to_string())
}

fn rss_of(pid: &str) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
