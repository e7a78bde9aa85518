//! The rules a Skype for Business Server Access Edge applies to federated
//! traffic, as Microsoft documents them; each rule names its page. Where
//! Microsoft documents no answer, the choice made is said.

use super::sip::Sip;

/// `ms-diagnostics-public` reasons, verbatim from [MS-OCER] "SipStack"
/// ErrorIds (learn.microsoft.com/openspecs/office_protocols/ms-ocer).
pub const FROM_NOT_AUTHORIZED_FEDERATED: (u16, &str) = (
    1002,
    "From URI not authorized to communicate with federated partners",
);
pub const USER_DOES_NOT_EXIST: (u16, &str) = (1003, "User does not exist");

/// A federated partner the edge knows: `New-CsAllowedDomain -Identity
/// <domain> -ProxyFqdn <fqdn>` ("the FQDN of the Access Edge server used
/// by the federated domain", Skype for Business PowerShell reference).
#[derive(Debug, Clone)]
pub struct AllowedDomain {
    pub domain: String,
    /// The name the partner's certificate must carry; without one the
    /// edge's own rule applies: the partner's SRV target (here: the domain).
    pub proxy_fqdn: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// `Set-CsAccessEdgeConfiguration -AllowFederatedUsers` (default False).
    pub allow_federated_users: bool,
    /// `-EnablePartnerDiscovery` (default False): without it "the server
    /// will only federate with domains found on the AllowedDomains list".
    pub enable_partner_discovery: bool,
    pub allowed: Vec<AllowedDomain>,
    /// `Get-CsBlockedDomain`: "messages sent from a blocked domain will
    /// automatically be rejected by Skype for Business Server".
    pub blocked: Vec<String>,
    /// `Set-CsDiagnosticHeaderConfiguration -SendToExternalNetworks`
    /// (default False): whether refusals carry `ms-diagnostics-public`.
    pub send_diagnostics_to_external: bool,
    /// The edge's own users (sip:user@domain); others are 404 with 1003.
    pub users: Vec<String>,
}

/// What the edge does with a federated request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// A response status, reason phrase and the [MS-OCER] diagnostic.
    Refuse(u16, &'static str, (u16, &'static str)),
}

impl Policy {
    /// Whether a request from `domain` may pass at all.
    pub fn admits(&self, domain: &str) -> Verdict {
        let refused = Verdict::Refuse(403, "Forbidden", FROM_NOT_AUTHORIZED_FEDERATED);
        if !self.allow_federated_users
            || self.blocked.iter().any(|b| b.eq_ignore_ascii_case(domain))
        {
            return refused;
        }
        let listed = self
            .allowed
            .iter()
            .any(|a| a.domain.eq_ignore_ascii_case(domain));
        if !listed && !self.enable_partner_discovery {
            return refused;
        }
        Verdict::Accept
    }

    /// The name a partner's certificate must prove: its ProxyFqdn, else
    /// the domain itself (what the test's DNS would name).
    pub fn partner_fqdn(&self, domain: &str) -> String {
        self.allowed
            .iter()
            .find(|a| a.domain.eq_ignore_ascii_case(domain))
            .and_then(|a| a.proxy_fqdn.clone())
            .unwrap_or_else(|| domain.to_owned())
    }

    /// Whether `aor` is one of the edge's users.
    pub fn has_user(&self, aor: &str) -> bool {
        self.users.iter().any(|u| u.eq_ignore_ascii_case(aor))
    }

    /// A refusal as the edge sends it: the diagnostic only when the edge
    /// is configured to tell external networks ([MS-OCER] §2.2.1.2:
    /// `ms-diagnostics-public` carries no `source` parameter).
    pub fn refusal(&self, request: &Sip, verdict: &Verdict, tag: &str) -> Option<Sip> {
        let Verdict::Refuse(status, reason, (code, text)) = verdict else {
            return None;
        };
        let response = request.response(*status, reason, tag);
        Some(if self.send_diagnostics_to_external {
            response.with("ms-diagnostics-public", format!("{code};reason=\"{text}\""))
        } else {
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            allow_federated_users: true,
            enable_partner_discovery: false,
            allowed: vec![AllowedDomain {
                domain: "xmpp.test".into(),
                proxy_fqdn: Some("gw.test".into()),
            }],
            blocked: vec!["evil.test".into()],
            send_diagnostics_to_external: false,
            users: vec!["sip:alice@contoso.test".into()],
        }
    }

    #[test]
    fn allowed_blocked_and_discovery() {
        let mut p = policy();
        assert_eq!(p.admits("XMPP.test"), Verdict::Accept);
        assert_ne!(p.admits("other.test"), Verdict::Accept);
        p.enable_partner_discovery = true;
        assert_eq!(p.admits("other.test"), Verdict::Accept);
        assert_ne!(p.admits("evil.test"), Verdict::Accept, "blocked wins");
        p.allow_federated_users = false;
        assert_ne!(p.admits("xmpp.test"), Verdict::Accept);
        assert_eq!(p.partner_fqdn("xmpp.test"), "gw.test");
        assert_eq!(p.partner_fqdn("other.test"), "other.test");
    }
}
