//! The remote-domain allow list, shared by every stream and replaceable at
//! run time (a reloaded configuration) without dropping connections.

use std::sync::{Arc, RwLock};

use xmppfed_config::DomainPattern;

#[derive(Debug, Clone, Default)]
pub struct AllowList {
    patterns: Arc<RwLock<Arc<Vec<DomainPattern>>>>,
}

impl AllowList {
    pub fn new(patterns: Vec<DomainPattern>) -> Self {
        Self {
            patterns: Arc::new(RwLock::new(Arc::new(patterns))),
        }
    }

    /// Whether `domain` may federate with us, in either direction.
    pub fn allows(&self, domain: &str) -> bool {
        let patterns = self.patterns();
        patterns.iter().any(|p| p.matches(domain))
    }

    /// The entry that allows `domain`, as written in the configuration.
    pub fn matching(&self, domain: &str) -> Option<String> {
        let patterns = self.patterns();
        patterns
            .iter()
            .find(|p| p.matches(domain))
            .map(ToString::to_string)
    }

    /// The exact domains on the list (wildcards name no one domain).
    pub fn exact(&self) -> Vec<String> {
        let patterns = self.patterns();
        patterns
            .iter()
            .filter_map(|p| match p {
                DomainPattern::Exact(domain) => Some(domain.clone()),
                DomainPattern::Suffix(_) => None,
            })
            .collect()
    }

    fn patterns(&self) -> Arc<Vec<DomainPattern>> {
        self.patterns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the list; streams check it again on their next stanza.
    pub fn replace(&self, patterns: Vec<DomainPattern>) {
        *self.patterns.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(patterns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_wildcard_and_reload() {
        let list = AllowList::new(vec![
            "xmpp.test".parse().unwrap(),
            "*.partner.test".parse().unwrap(),
        ]);
        assert!(list.allows("xmpp.test"));
        assert!(list.allows("XMPP.test"));
        assert!(list.allows("chat.partner.test"));
        assert!(!list.allows("partner.test"));
        assert!(!list.allows("evil.test"));
        assert_eq!(
            list.matching("a.chat.partner.test").as_deref(),
            Some("*.partner.test")
        );
        assert_eq!(list.matching("evil.test"), None);
        assert_eq!(list.exact(), vec!["xmpp.test".to_owned()]);
        list.replace(vec!["evil.test".parse().unwrap()]);
        assert!(list.allows("evil.test"));
        assert!(!list.allows("xmpp.test"));
    }
}
