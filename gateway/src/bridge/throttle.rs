//! Per-user token buckets — messages, bytes and presence updates per minute,
//! with a burst — from `[throttle]` (rendered from ThrottlePolicy resources),
//! with per-user overrides by UPN or bare JID. A refusal carries a text the
//! sender can read; nothing over the limit is dropped silently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use xmppfed_config::{ThrottleConfig, ThrottleLimits};

/// Buckets kept before idle, full ones are forgotten.
const PRUNE_AT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Messages,
    Bytes,
    Presence,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Messages => "messages",
            Kind::Bytes => "bytes",
            Kind::Presence => "presence",
        }
    }
}

/// Why something was refused, for the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: Kind,
    pub text: String,
}

struct Bucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.at = now;
    }
}

/// The limits are replaceable at run time (a reloaded configuration); each
/// bucket takes the new shape at its next use and keeps its tokens.
pub struct Throttle {
    config: RwLock<Arc<ThrottleConfig>>,
    buckets: Mutex<HashMap<(String, Kind), Bucket>>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("config", &self.current())
            .finish_non_exhaustive()
    }
}

/// Overrides match case-insensitively.
fn normalised(mut config: ThrottleConfig) -> Arc<ThrottleConfig> {
    config.overrides = config
        .overrides
        .into_iter()
        .map(|(k, v)| (k.to_lowercase(), v))
        .collect();
    Arc::new(config)
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config: RwLock::new(normalised(config)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Applies new limits from now on.
    pub fn replace(&self, config: ThrottleConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = normalised(config);
    }

    fn current(&self) -> Arc<ThrottleConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The limits of a user (UPN or bare JID), or of another name for them
    /// (a Teams user may be overridden by UPN or by object id).
    pub fn limits(&self, keys: &[&str]) -> ThrottleLimits {
        let config = self.current();
        keys.iter()
            .find_map(|k| config.overrides.get(&k.to_lowercase()))
            .copied()
            .unwrap_or(config.default)
    }

    fn shape(limits: &ThrottleLimits, kind: Kind) -> (f64, f64) {
        let burst = f64::from(limits.burst.max(1));
        match kind {
            Kind::Messages => (burst, f64::from(limits.messages_per_minute) / 60.0),
            // A minute's worth of bytes at once: one long message must fit.
            Kind::Bytes => (
                limits.bytes_per_minute as f64,
                limits.bytes_per_minute as f64 / 60.0,
            ),
            Kind::Presence => (burst, f64::from(limits.presence_updates_per_minute) / 60.0),
        }
    }

    /// Takes `costs` from the user's buckets, all or nothing.
    fn take(&self, keys: &[&str], costs: &[(Kind, f64)]) -> Result<(), Refusal> {
        let limits = self.limits(keys);
        let user = keys.first().map(|k| k.to_lowercase()).unwrap_or_default();
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_AT {
            buckets.retain(|_, b| {
                b.refill(now);
                b.tokens < b.capacity
            });
        }
        for &(kind, cost) in costs {
            let (capacity, per_sec) = Self::shape(&limits, kind);
            let bucket = buckets.entry((user.clone(), kind)).or_insert(Bucket {
                tokens: capacity,
                capacity,
                per_sec,
                at: now,
            });
            // Limits may have changed with the configuration.
            bucket.capacity = capacity;
            bucket.per_sec = per_sec;
            bucket.refill(now);
            if bucket.tokens < cost {
                return Err(Refusal {
                    kind,
                    text: match kind {
                        Kind::Messages => format!(
                            "rate limit: at most {} messages per minute (bursts of {}); try again shortly",
                            limits.messages_per_minute, limits.burst
                        ),
                        Kind::Bytes => format!(
                            "rate limit: at most {} bytes of messages per minute; try again shortly",
                            limits.bytes_per_minute
                        ),
                        Kind::Presence => format!(
                            "rate limit: at most {} presence updates per minute",
                            limits.presence_updates_per_minute
                        ),
                    },
                });
            }
        }
        for &(kind, cost) in costs {
            if let Some(b) = buckets.get_mut(&(user.clone(), kind)) {
                b.tokens -= cost;
            }
        }
        Ok(())
    }

    /// One message of `bytes` from a user known by `keys` (first: the bucket's key).
    pub fn message(&self, keys: &[&str], bytes: usize) -> Result<(), Refusal> {
        self.take(keys, &[(Kind::Messages, 1.0), (Kind::Bytes, bytes as f64)])
    }

    pub fn presence(&self, keys: &[&str]) -> Result<(), Refusal> {
        self.take(keys, &[(Kind::Presence, 1.0)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn limits(messages_per_minute: u32, burst: u32, bytes_per_minute: u64) -> ThrottleLimits {
        ThrottleLimits {
            messages_per_minute,
            bytes_per_minute,
            presence_updates_per_minute: 6,
            burst,
        }
    }

    #[test]
    fn bursts_then_the_rate_and_overrides_win() {
        let mut overrides = BTreeMap::new();
        overrides.insert("Boss@Contoso.com".to_owned(), limits(600, 100, 1 << 20));
        let t = Throttle::new(ThrottleConfig {
            default: limits(60, 3, 1000),
            overrides,
        });
        for _ in 0..3 {
            t.message(&["bob@x.test"], 10).unwrap();
        }
        let refused = t.message(&["bob@x.test"], 10).unwrap_err();
        assert_eq!(refused.kind, Kind::Messages);
        assert!(
            refused.text.contains("60 messages per minute"),
            "{}",
            refused.text
        );
        // Someone else is not affected; the override is found by any of its names.
        t.message(&["carol@x.test"], 10).unwrap();
        for _ in 0..100 {
            t.message(&["obj-id", "boss@contoso.com"], 10).unwrap();
        }
        // Bytes: one message over a minute's worth is refused, without using a message.
        let big = t.message(&["dave@x.test"], 2000).unwrap_err();
        assert_eq!(big.kind, Kind::Bytes);
        for _ in 0..3 {
            t.message(&["dave@x.test"], 10).unwrap();
        }
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let t = Throttle::new(ThrottleConfig {
            default: limits(6000, 1, 1 << 20),
            overrides: BTreeMap::new(),
        });
        t.message(&["bob"], 1).unwrap();
        assert!(t.message(&["bob"], 1).is_err());
        std::thread::sleep(std::time::Duration::from_millis(30));
        t.message(&["bob"], 1).unwrap();
    }
}
