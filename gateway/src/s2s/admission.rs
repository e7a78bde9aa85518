//! Admission of inbound connections: how many may be open and not yet
//! authenticated, in total and per source address.
//!
//! Anyone who can reach the s2s port can open a connection and claim any
//! allowed domain; until dialback or SASL proves the claim, the connection
//! costs us memory and a task for nothing. Past either limit new connections
//! are answered with a stream error and closed at once, counted in
//! `xmppfed_s2s_connections_refused_total{reason}` and logged once per
//! interval (a flood must not become a flood of log lines).
//!
//! IPv6 sources are counted per /64, the block one host is usually given.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_unauthenticated` connections are waiting to authenticate.
    Total(usize),
    /// `max_unauthenticated_per_address` of them come from this address.
    PerAddress(usize),
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Total(_) => "total",
            Refusal::PerAddress(_) => "per-address",
        }
    }

    pub fn text(self) -> String {
        match self {
            Refusal::Total(n) => {
                format!("{n} connections are already waiting to authenticate; try again later")
            }
            Refusal::PerAddress(n) => {
                format!("{n} connections from your address are already waiting to authenticate")
            }
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// How often a refusal is logged at most.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
    /// When a refusal was last logged, and how many since.
    log: Mutex<(Option<Instant>, u64)>,
}

/// The source a connection counts against.
fn source(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::from(segments)
        }
        v4 => v4,
    }
}

impl Admission {
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_source,
            counts: Mutex::new(Counts::default()),
            log: Mutex::new((None, 0)),
        })
    }

    /// A ticket for a new connection from `addr`, or why there is none.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Ticket, Refusal> {
        let source = source(addr);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.max_total {
            return Err(Refusal::Total(self.max_total));
        }
        let from_source = counts.by_source.entry(source).or_default();
        if *from_source >= self.max_per_source {
            return Err(Refusal::PerAddress(self.max_per_source));
        }
        *from_source += 1;
        counts.total += 1;
        Ok(Ticket {
            admission: self.clone(),
            source,
            held: true,
        })
    }

    /// Connections admitted and not yet authenticated.
    #[cfg(test)]
    fn unauthenticated(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    fn release(&self, source: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                counts.by_source.remove(&source);
            }
        }
    }

    /// Logs a refusal unless one was logged within the interval; the next
    /// line says how many went unlogged.
    pub fn log_refusal(&self, refusal: Refusal, addr: IpAddr) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if log
            .0
            .is_some_and(|at| now.duration_since(at) < LOG_INTERVAL)
        {
            log.1 += 1;
            return;
        }
        let unlogged = std::mem::take(&mut log.1);
        log.0 = Some(now);
        tracing::warn!(
            reason = refusal.reason(),
            %addr,
            refused_since_last_line = unlogged,
            "inbound s2s connection refused: {}",
            refusal.text()
        );
    }
}

/// A connection's place among the unauthenticated ones, given up when it
/// authenticates or closes.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
    held: bool,
}

impl Ticket {
    /// The connection has authenticated a domain: it no longer counts.
    pub fn authenticated(&mut self) {
        if std::mem::take(&mut self.held) {
            self.admission.release(self.source);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.authenticated();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_per_source_and_in_total_and_gives_places_back() {
        let a = Admission::new(3, 2);
        let t1 = a.admit(ip("192.0.2.1")).unwrap();
        let mut t2 = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            a.admit(ip("192.0.2.1")).unwrap_err(),
            Refusal::PerAddress(2)
        );
        let _t3 = a.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(a.admit(ip("192.0.2.3")).unwrap_err(), Refusal::Total(3));
        // Authenticating gives the place back, once.
        t2.authenticated();
        t2.authenticated();
        assert_eq!(a.unauthenticated(), 2);
        drop(t2);
        assert_eq!(a.unauthenticated(), 2);
        let _t4 = a.admit(ip("192.0.2.1")).unwrap();
        drop(t1);
        assert_eq!(a.unauthenticated(), 2);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a = Admission::new(10, 1);
        let _t = a.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(a.admit(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(a.admit(ip("2001:db8:1:3::1")).is_ok());
        let _v4 = a.admit(ip("192.0.2.7")).unwrap();
        assert!(a.admit(ip("::ffff:192.0.2.7")).is_err());
    }
}
