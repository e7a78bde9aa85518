//! Liveness and readiness. Each component that must be ready before the process
//! serves traffic registers here and reports its own state.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use std::fmt;

/// Shared health state; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health {
    components: Arc<RwLock<BTreeMap<String, State>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    ready: bool,
    /// Ready, but something an operator should see (e.g. some shadow
    /// accounts refused by the tenant): reported, never fails the probe.
    degraded: bool,
    reason: String,
}

/// One component's handle for reporting its readiness.
#[derive(Debug, Clone)]
pub struct ComponentHealth {
    name: String,
    health: Health,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub ready: bool,
    /// Components that are not ready, with why.
    pub not_ready: Vec<(String, String)>,
    /// Components that are ready but degraded, with why.
    pub degraded: Vec<(String, String)>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a component, not ready until it says so.
    pub fn component(&self, name: &str) -> ComponentHealth {
        self.set(name, false, false, "starting");
        ComponentHealth {
            name: name.to_owned(),
            health: self.clone(),
        }
    }

    fn set(&self, name: &str, ready: bool, degraded: bool, reason: &str) {
        // A poisoned lock only means a reporter panicked mid-write; the map is still valid.
        let mut map = self.components.write().unwrap_or_else(|p| p.into_inner());
        map.insert(
            name.to_owned(),
            State {
                ready,
                degraded,
                reason: reason.to_owned(),
            },
        );
    }

    pub fn report(&self) -> HealthReport {
        let map = self.components.read().unwrap_or_else(|p| p.into_inner());
        let not_ready: Vec<_> = map
            .iter()
            .filter(|(_, s)| !s.ready)
            .map(|(n, s)| (n.clone(), s.reason.clone()))
            .collect();
        let degraded = map
            .iter()
            .filter(|(_, s)| s.ready && s.degraded)
            .map(|(n, s)| (n.clone(), s.reason.clone()))
            .collect();
        HealthReport {
            ready: not_ready.is_empty(),
            not_ready,
            degraded,
        }
    }
}

impl ComponentHealth {
    pub fn ready(&self) {
        self.health.set(&self.name, true, false, "ready");
    }

    pub fn not_ready(&self, reason: &str) {
        self.health.set(&self.name, false, false, reason);
    }

    /// Ready, with something to report on `/readyz`.
    pub fn degraded(&self, reason: &str) {
        self.health.set(&self.name, true, true, reason);
    }
}

/// Plain-text body of `/readyz`: `ok`, or one line per component that is
/// not ready; then one line per degraded component.
impl fmt::Display for HealthReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ready {
            writeln!(f, "ok")?;
        }
        for (name, reason) in &self.not_ready {
            writeln!(f, "{name}: not ready: {reason}")?;
        }
        for (name, reason) in &self.degraded {
            writeln!(f, "{name}: degraded: {reason}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_component_is() {
        let h = Health::new();
        assert!(h.report().ready, "no components: ready");
        let a = h.component("s2s");
        let b = h.component("store");
        assert_eq!(h.report().not_ready.len(), 2);
        a.ready();
        b.not_ready("migrations running");
        let r = h.report();
        assert!(!r.ready);
        assert_eq!(
            r.not_ready,
            vec![("store".to_owned(), "migrations running".to_owned())]
        );
        assert_eq!(r.to_string(), "store: not ready: migrations running\n");
        b.ready();
        assert!(h.report().ready);
        assert_eq!(h.report().to_string(), "ok\n");
        b.degraded("3 accounts refused");
        assert!(h.report().ready, "degraded is still ready");
        assert_eq!(
            h.report().to_string(),
            "ok\nstore: degraded: 3 accounts refused\n"
        );
    }
}
