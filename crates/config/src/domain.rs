//! Domain names and allow-list patterns (`example.org`, `*.example.org`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// True for a DNS domain name as XMPP uses it: dot-separated labels of ASCII
/// letters, digits and hyphens (IDNs in their A-label form), each 1–63 bytes,
/// no leading or trailing hyphen, 253 bytes at most.
pub fn is_valid_domain(domain: &str) -> bool {
    if domain.is_empty() || domain.len() > 253 {
        return false;
    }
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// An allow-list entry: one exact domain, or every subdomain of a suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DomainPattern {
    Exact(String),
    /// `*.example.org`: matches `a.example.org` and `a.b.example.org`, not `example.org`.
    Suffix(String),
}

impl DomainPattern {
    /// Whether `domain` (compared case-insensitively) is allowed by this pattern.
    pub fn matches(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        match self {
            DomainPattern::Exact(d) => domain == *d,
            DomainPattern::Suffix(s) => domain
                .strip_suffix(s.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl FromStr for DomainPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let (pattern, domain) = match lower.strip_prefix("*.") {
            Some(rest) => (DomainPattern::Suffix(rest.to_owned()), rest),
            None => (DomainPattern::Exact(lower.clone()), lower.as_str()),
        };
        if is_valid_domain(domain) {
            Ok(pattern)
        } else {
            Err(format!(
                "`{s}` is not a domain name or a `*.suffix` wildcard"
            ))
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Exact(d) => f.write_str(d),
            DomainPattern::Suffix(s) => write!(f, "*.{s}"),
        }
    }
}

impl Serialize for DomainPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DomainPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_domains() {
        for ok in [
            "example.org",
            "teams.example.com",
            "xn--bcher-kva.example",
            "a",
            "a-b.c",
        ] {
            assert!(is_valid_domain(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a-.b",
            "a b.c",
            "a_b.c",
            "ex@mple.org",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_domain(bad), "{bad:?}");
        }
    }

    #[test]
    fn exact_pattern_matches_only_itself() {
        let p: DomainPattern = "Example.ORG".parse().unwrap();
        assert!(p.matches("example.org"));
        assert!(p.matches("EXAMPLE.org."));
        assert!(!p.matches("a.example.org"));
        assert!(!p.matches("badexample.org"));
    }

    #[test]
    fn suffix_pattern_matches_subdomains_only() {
        let p: DomainPattern = "*.example.org".parse().unwrap();
        assert!(p.matches("a.example.org"));
        assert!(p.matches("a.b.example.org"));
        assert!(!p.matches("example.org"));
        assert!(!p.matches("badexample.org"));
        assert!(!p.matches(".example.org"));
        assert_eq!(p.to_string(), "*.example.org");
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        for bad in [
            "*",
            "*.",
            "a.*.org",
            "**.org",
            "exa mple.org",
            "*example.org",
        ] {
            assert!(bad.parse::<DomainPattern>().is_err(), "{bad}");
        }
    }
}
