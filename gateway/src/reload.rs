//! Live reload of what the operator changes without rolling the pods: the
//! allow lists (DomainWhitelist, the internal users and groups) and the
//! throttle (ThrottlePolicy). A pod restart would drop every s2s stream, and
//! remote servers bounce what they were sending rather than retry, so these
//! are applied in place. The configuration file (a ConfigMap, which the
//! kubelet replaces in place) is read again every few seconds; a change
//! elsewhere in it is logged as taking effect at the next start (the
//! operator rolls the pods for those), and an invalid file keeps the
//! running configuration.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use xmppfed_config::{AllowConfig, GatewayConfig};
use xmppfed_telemetry::Metrics;

use crate::bridge::throttle::Throttle;
use crate::bridge::users::directory::{AllowedNames, AllowedUsers};
use crate::s2s::AllowList;

/// How often the file is read again: a small file, and the kubelet's own
/// delay (its sync period, about a minute) dominates anyway.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// What a reload can change in the running gateway.
#[derive(Debug, Clone)]
pub struct Live {
    pub remote_domains: AllowList,
    /// With Graph: the internal allow list's names.
    pub internal: Option<AllowedNames>,
    /// With Graph: the per-user throttle.
    pub throttle: Option<Arc<Throttle>>,
}

/// What became of a changed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The allow lists or the throttle now follow the file.
    Applied,
    /// Only sections read at start changed: they wait for a restart.
    AtRestart,
    /// The file does not parse or validate: the running configuration stays.
    Invalid,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::AtRestart => "at-restart",
            Outcome::Invalid => "invalid",
        }
    }
}

/// Applies changed files to the running gateway.
pub struct Reloader {
    live: Live,
    running: GatewayConfig,
    reloads: Family<Vec<(&'static str, String)>, Counter>,
}

impl Reloader {
    pub fn new(live: Live, running: GatewayConfig, metrics: &Metrics) -> Self {
        let reloads = metrics.register(
            "config_reloads",
            "Changes of the configuration file seen while running, by outcome (applied, at-restart, invalid)",
            Family::default(),
        );
        Self {
            live,
            running,
            reloads,
        }
    }

    /// Reads `path` every `every` and applies what changed, until aborted.
    pub async fn watch(mut self, path: PathBuf, every: Duration) {
        // Compared with what runs, not with the file at this task's start:
        // a change between the gateway's start and now is not missed.
        let mut last: Option<String> = None;
        let mut unreadable = false;
        loop {
            tokio::time::sleep(every).await;
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(text) => {
                    unreadable = false;
                    text
                }
                Err(e) => {
                    // Said once: the kubelet swaps the file, and a volume can go.
                    if !unreadable {
                        tracing::warn!(file = %path.display(), error = %e, "cannot read the configuration file again; the running configuration stays");
                    }
                    unreadable = true;
                    continue;
                }
            };
            if last.as_deref() == Some(text.as_str()) {
                continue;
            }
            last = Some(text.clone());
            let outcome = match GatewayConfig::from_toml_str(&text) {
                Ok(config) if config == self.running => continue,
                Ok(config) => self.apply(config),
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "the changed configuration is invalid; the running configuration stays");
                    Outcome::Invalid
                }
            };
            self.reloads
                .get_or_create(&vec![("outcome", outcome.label().to_owned())])
                .inc();
        }
    }

    /// Applies the live sections of `config`; says which others changed.
    pub fn apply(&mut self, config: GatewayConfig) -> Outcome {
        let mut changed = Vec::new();
        if config.allow.remote_domains != self.running.allow.remote_domains {
            self.live
                .remote_domains
                .replace(config.allow.remote_domains.clone());
            changed.push("allow.remote_domains");
        }
        let names = |a: &AllowConfig| AllowedUsers {
            upns: a.internal_users.clone(),
            groups: a.internal_groups.clone(),
        };
        if let Some(internal) = &self.live.internal
            && names(&config.allow) != names(&self.running.allow)
        {
            internal.replace(names(&config.allow));
            changed.push("allow.internal_users/groups");
        }
        if let Some(throttle) = &self.live.throttle
            && config.throttle != self.running.throttle
        {
            throttle.replace(config.throttle.clone());
            changed.push("throttle");
        }
        let at_restart = config.without_live_sections() != self.running.without_live_sections();
        if at_restart {
            tracing::warn!(
                "the configuration changed in sections read only at start; they apply when the gateway restarts"
            );
        }
        if !changed.is_empty() {
            tracing::info!(sections = ?changed, "configuration reloaded");
        }
        self.running = config;
        if changed.is_empty() && at_restart {
            Outcome::AtRestart
        } else {
            Outcome::Applied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[xmpp]
domain = "teams.example.test"
[s2s]
require_tls = false
[allow]
remote_domains = ["a.example"]
"#;

    fn reloader() -> (Reloader, Live, Arc<Throttle>) {
        let running = GatewayConfig::from_toml_str(BASE).unwrap();
        let throttle = Arc::new(Throttle::new(running.throttle.clone()));
        let live = Live {
            remote_domains: AllowList::new(running.allow.remote_domains.clone()),
            internal: Some(AllowedNames::default()),
            throttle: Some(throttle.clone()),
        };
        let metrics = Metrics::new("t", "0");
        (
            Reloader::new(live.clone(), running, &metrics),
            live,
            throttle,
        )
    }

    #[test]
    fn allow_lists_and_throttle_apply_live_and_the_rest_waits() {
        let (mut r, live, throttle) = reloader();
        let text = format!(
            "{BASE}internal_users = [\"alice@contoso.example\"]\n[throttle.default]\nmessages_per_minute = 5\nbytes_per_minute = 1000\npresence_updates_per_minute = 5\nburst = 2\n"
        )
        .replace("[\"a.example\"]", "[\"b.example\", \"*.c.example\"]");
        let outcome = r.apply(GatewayConfig::from_toml_str(&text).unwrap());
        assert_eq!(outcome, Outcome::Applied);
        assert!(live.remote_domains.allows("b.example"));
        assert!(live.remote_domains.allows("x.c.example"));
        assert!(!live.remote_domains.allows("a.example"), "narrowed too");
        assert_eq!(
            live.internal.as_ref().unwrap().current().upns,
            vec!["alice@contoso.example".to_owned()]
        );
        assert_eq!(throttle.limits(&["bob@x"]).messages_per_minute, 5);

        // Another domain is read only at start.
        let moved = text.replace("teams.example.test", "teams.elsewhere.test");
        let outcome = r.apply(GatewayConfig::from_toml_str(&moved).unwrap());
        assert_eq!(outcome, Outcome::AtRestart);
        assert!(live.remote_domains.allows("b.example"), "unchanged");
    }

    #[tokio::test]
    async fn a_changed_file_is_applied_and_an_invalid_one_keeps_the_running_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, BASE).unwrap();
        let (r, live, _) = reloader();
        let task = tokio::spawn(r.watch(path.clone(), Duration::from_millis(20)));
        // The kubelet swaps the file whole; a rename does the same here.
        let swap = |text: &str| {
            let tmp = dir.path().join("next");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        swap(&BASE.replace("a.example", "later.example"));
        let mut waited = 0;
        while !live.remote_domains.allows("later.example") {
            assert!(waited < 250, "the new domain allowed within 5 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += 1;
        }
        swap("[xmpp]\ndomain = \"NOT A DOMAIN\"\n");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            live.remote_domains.allows("later.example"),
            "an invalid file keeps the running list"
        );
        task.abort();
    }
}
