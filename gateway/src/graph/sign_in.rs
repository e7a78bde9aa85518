//! The identity platform's refusals, typed: each AADSTS code the gateway's
//! sign-ins can meet, with what the tenant's administrator must change, and
//! a monitor that reports the refusals in force (log, metric, readiness)
//! instead of retrying them in silence.
//!
//! Codes: https://learn.microsoft.com/entra/identity-platform/reference-error-codes;
//! why the password grant meets them: https://learn.microsoft.com/entra/identity-platform/v2-oauth-ropc.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use xmppfed_telemetry::{ComponentHealth, Metrics};

use super::auth::Identity;

/// Why the token endpoint refused a sign-in, as far as the fix differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SignInRefusal {
    /// AADSTS50076 / 50074: a Conditional Access policy or per-user MFA requires MFA.
    MfaRequired,
    /// AADSTS50079 / 50072: MFA registration is required (Security Defaults after the 14-day grace).
    MfaRegistrationRequired,
    /// AADSTS53003 (and 53000/53001 device conditions): Conditional Access blocks the sign-in.
    ConditionalAccessBlocked,
    /// AADSTS50055: the password expired.
    PasswordExpired,
    /// AADSTS65001: nobody consented to the delegated permissions.
    ConsentRequired,
    /// AADSTS50126: wrong user name or password (or a federated domain ROPC cannot check).
    InvalidCredentials,
    /// AADSTS50057: the account is disabled.
    AccountDisabled,
    /// AADSTS50053: locked out, or sign-ins from our address look malicious.
    AccountLocked,
    /// AADSTS50034: no such user in the tenant.
    UserNotFound,
    /// AADSTS70000 / 70008 / 700082 / 50173: the refresh token is spent, expired
    /// or revoked; the gateway signs in again by itself.
    RefreshTokenInvalid,
    /// AADSTS7000215: the app's client secret is wrong.
    InvalidClientSecret,
    /// AADSTS7000222: the app's client secret expired.
    ClientSecretExpired,
    /// AADSTS700027: the certificate assertion does not verify.
    InvalidClientAssertion,
    /// AADSTS700016: no such app in the tenant.
    AppNotFound,
    /// AADSTS90002: no such tenant.
    TenantNotFound,
}

impl SignInRefusal {
    /// The refusal an AADSTS code stands for; `None` for codes with no known fix.
    pub fn from_code(code: u32) -> Option<Self> {
        use SignInRefusal::*;
        Some(match code {
            50074 | 50076 => MfaRequired,
            50072 | 50079 => MfaRegistrationRequired,
            53000 | 53001 | 53003 => ConditionalAccessBlocked,
            50055 => PasswordExpired,
            65001 => ConsentRequired,
            50126 => InvalidCredentials,
            50057 => AccountDisabled,
            50053 => AccountLocked,
            50034 => UserNotFound,
            70000 | 70008 | 700082 | 50173 => RefreshTokenInvalid,
            7000215 => InvalidClientSecret,
            7000222 => ClientSecretExpired,
            700027 => InvalidClientAssertion,
            700016 => AppNotFound,
            90002 => TenantNotFound,
            _ => return None,
        })
    }

    /// The code in an identity-platform error body: `error_codes[0]`, else the
    /// `AADSTSnnnn:` that starts `error_description`.
    pub fn code_of(error_codes: &[u32], description: &str) -> Option<u32> {
        error_codes.first().copied().or_else(|| {
            let digits: String = description
                .strip_prefix("AADSTS")?
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
    }

    /// A name for metrics, status conditions and logs.
    pub fn reason(self) -> &'static str {
        use SignInRefusal::*;
        match self {
            MfaRequired => "MfaRequired",
            MfaRegistrationRequired => "MfaRegistrationRequired",
            ConditionalAccessBlocked => "ConditionalAccessBlocked",
            PasswordExpired => "PasswordExpired",
            ConsentRequired => "ConsentRequired",
            InvalidCredentials => "InvalidCredentials",
            AccountDisabled => "AccountDisabled",
            AccountLocked => "AccountLocked",
            UserNotFound => "UserNotFound",
            RefreshTokenInvalid => "RefreshTokenInvalid",
            InvalidClientSecret => "InvalidClientSecret",
            ClientSecretExpired => "ClientSecretExpired",
            InvalidClientAssertion => "InvalidClientAssertion",
            AppNotFound => "AppNotFound",
            TenantNotFound => "TenantNotFound",
        }
    }

    /// What the tenant's administrator does about it.
    pub fn fix(self) -> &'static str {
        use SignInRefusal::*;
        match self {
            MfaRequired => {
                "shadow accounts sign in with a password and cannot do MFA: exclude them (the shadow accounts' group or administrative unit) from every Conditional Access policy that requires MFA, and turn per-user MFA off for them"
            }
            MfaRegistrationRequired => {
                "Security Defaults require every user to register for MFA, which shadow accounts cannot: turn Security Defaults off and protect the tenant with Conditional Access policies that exclude the shadow accounts, or put the shadow accounts in a tenant of their own (see README, shadow tenant)"
            }
            ConditionalAccessBlocked => {
                "a Conditional Access policy blocks the shadow accounts' sign-in: exclude the shadow accounts' group from it, or allow the gateway's network location"
            }
            PasswordExpired => {
                "the shadow account's password expired: set passwordPolicies to DisablePasswordExpiration on the shadow accounts (the gateway sets it on those it creates) and delete the account so that the gateway creates it again"
            }
            ConsentRequired => {
                "grant admin consent for the app's delegated permissions (Chat.ReadWrite, Presence.ReadWrite, offline_access) in Entra admin center > App registrations > API permissions"
            }
            InvalidCredentials => {
                "the tenant refuses the shadow account's password: the shadow UPN domain must be a managed (not federated) domain, and nobody may reset shadow-account passwords by hand"
            }
            AccountDisabled => {
                "the shadow account is disabled: enable it (accountEnabled) or delete it so that the gateway creates it again"
            }
            AccountLocked => {
                "Smart Lockout locked the shadow account: check for password-spray against it, then unlock it or wait for the lockout to end"
            }
            UserNotFound => {
                "the shadow account was deleted from the tenant: the gateway creates it again on the contact's next message"
            }
            RefreshTokenInvalid => {
                "nothing: the gateway signs the account in again with its password"
            }
            InvalidClientSecret => {
                "graph.client_secret does not match any secret of the app registration: create a new client secret and update the gateway's Secret"
            }
            ClientSecretExpired => {
                "the app's client secret expired: create a new one (or use a certificate) and update the gateway's Secret"
            }
            InvalidClientAssertion => {
                "the app's certificate assertion is refused: upload the gateway's certificate (graph.client_certificate) to the app registration"
            }
            AppNotFound => {
                "graph.client_id names no app in this tenant: check the client id and tenant id, and that the app was not deleted"
            }
            TenantNotFound => "graph.tenant_id names no Microsoft Entra tenant",
        }
    }

    /// Refusals that concern the app registration itself (nothing works).
    pub fn concerns_app(self) -> bool {
        use SignInRefusal::*;
        matches!(
            self,
            InvalidClientSecret
                | ClientSecretExpired
                | InvalidClientAssertion
                | AppNotFound
                | TenantNotFound
        )
    }

    /// Whether the gateway recovers by itself (a new password sign-in).
    pub fn recovers_alone(self) -> bool {
        matches!(self, SignInRefusal::RefreshTokenInvalid)
    }
}

impl std::fmt::Display for SignInRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// Readiness before the app's first token.
const NOT_YET: &str = "the app has not obtained a token from the tenant yet";
const SHADOW_NOT_YET: &str = "the shadow tenant's app has not obtained a token from it yet";
/// The pod annotation's reason while the identity platform cannot be reached
/// (the operator's TenantReady reason).
pub const UNREACHABLE: &str = "IdentityPlatformUnreachable";

/// Sign-in refusals in force, by who was refused; reported as a metric
/// (`xmppfed_graph_sign_in_refusals_total{who,reason}`), once in the log per
/// new refusal, and on `/readyz`: the app refused makes the gateway not
/// ready; shadow accounts refused leave it ready (XMPP still works, and
/// messages wait in the outbox) but `/readyz` names them with the fix.
pub struct SignInMonitor {
    refused: Mutex<BTreeMap<String, SignInRefusal>>,
    /// Whether the app has ever obtained a token: until then the gateway is
    /// not ready, whatever else works (its credentials are unproven).
    app_proven: std::sync::atomic::AtomicBool,
    /// Why the app has no token yet when the identity platform could not be
    /// reached (the refusals cover what it answered).
    unreachable: Mutex<Option<String>>,
    /// The tenant's answer as the pod annotation carries it (`None` until
    /// the first sign-in): `ok`, or `<Reason>: <summary>`.
    state: tokio::sync::watch::Sender<Option<String>>,
    health: Option<ComponentHealth>,
    counter: Option<Family<Vec<(String, String)>, Counter>>,
    /// Who "the app" is in what the monitor says (the shadow tenant's app
    /// beside the home tenant's), and readiness before its first token.
    app: &'static str,
    not_yet: &'static str,
}

impl std::fmt::Debug for SignInMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInMonitor").finish_non_exhaustive()
    }
}

impl Default for SignInMonitor {
    fn default() -> Self {
        Self::detached()
    }
}

impl SignInMonitor {
    /// Keeps the state only (tests, tools).
    pub fn detached() -> Self {
        Self {
            refused: Mutex::new(BTreeMap::new()),
            app_proven: std::sync::atomic::AtomicBool::new(false),
            unreachable: Mutex::new(None),
            state: tokio::sync::watch::channel(None).0,
            health: None,
            counter: None,
            app: "the app",
            not_yet: NOT_YET,
        }
    }

    pub fn new(metrics: &Metrics, health: ComponentHealth) -> Self {
        health.not_ready(NOT_YET);
        Self {
            refused: Mutex::new(BTreeMap::new()),
            app_proven: std::sync::atomic::AtomicBool::new(false),
            unreachable: Mutex::new(None),
            state: tokio::sync::watch::channel(None).0,
            app: "the app",
            not_yet: NOT_YET,
            health: Some(health),
            counter: Some(metrics.register(
                "graph_sign_in_refusals",
                "Sign-ins the Microsoft identity platform refused, by who (app or shadow) and why",
                Family::default(),
            )),
        }
    }

    /// A monitor for a second tenant (the shadow accounts' own): its own
    /// state and readiness component, counted in the same metric.
    pub fn beside(&self, health: ComponentHealth) -> Self {
        health.not_ready(SHADOW_NOT_YET);
        Self {
            health: Some(health),
            counter: self.counter.clone(),
            app: "the shadow tenant's app",
            not_yet: SHADOW_NOT_YET,
            ..Self::detached()
        }
    }

    /// Both tenants' answer as one (for the pod annotation): a refusal in
    /// either wins; `ok` when both answered and neither refuses.
    pub fn watch_both(home: &Self, shadow: &Self) -> tokio::sync::watch::Receiver<Option<String>> {
        let (mut a, mut b) = (home.watch(), shadow.watch());
        let (tx, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            loop {
                let both = match (a.borrow_and_update().clone(), b.borrow_and_update().clone()) {
                    (Some(x), _) if x != "ok" => Some(x),
                    (_, Some(y)) if y != "ok" => Some(y),
                    (Some(x), Some(_)) => Some(x),
                    _ => None,
                };
                tx.send_if_modified(|now| {
                    let changed = *now != both;
                    *now = both;
                    changed
                });
                tokio::select! {
                    r = a.changed() => if r.is_err() { return },
                    r = b.changed() => if r.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        rx
    }

    fn key(identity: &Identity) -> String {
        match identity {
            Identity::App => "app".to_owned(),
            Identity::User(upn) => upn.to_lowercase(),
        }
    }

    pub fn refused(&self, identity: &Identity, refusal: SignInRefusal, description: &str) {
        let who = match identity {
            Identity::App => "app",
            Identity::User(_) => "shadow",
        };
        if let Some(counter) = &self.counter {
            counter
                .get_or_create(&vec![
                    ("who".to_owned(), who.to_owned()),
                    ("reason".to_owned(), refusal.reason().to_owned()),
                ])
                .inc();
        }
        if refusal.recovers_alone() {
            return;
        }
        let new = self
            .lock()
            .insert(Self::key(identity), refusal)
            .is_none_or(|before| before != refusal);
        if new {
            let account = Self::key(identity);
            tracing::error!(%account, reason = refusal.reason(), fix = refusal.fix(), %description,
                "the Microsoft identity platform refuses a sign-in");
        }
        self.report();
    }

    pub fn signed_in(&self, identity: &Identity) {
        if *identity == Identity::App
            && !self
                .app_proven
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            tracing::info!("the app obtained a token from the tenant: its credentials work");
            self.lock_unreachable().take();
            self.lock().remove("app");
            self.report();
        } else if self.lock().remove(&Self::key(identity)).is_some() {
            tracing::info!(account = %Self::key(identity), "sign-in accepted again");
            self.report();
        } else if self.state.borrow().is_none() {
            self.report();
        }
    }

    /// The app's token request did not reach the identity platform. Before
    /// the app's first token this is why the gateway is not ready (and what
    /// the pod annotation says); afterwards a passing outage changes nothing
    /// (messages wait in the outbox) and the retries are logged where they happen.
    pub fn unreachable(&self, identity: &Identity, error: &str) {
        if *identity != Identity::App || self.proven() {
            return;
        }
        let line = format!("cannot reach the Microsoft identity platform: {error}");
        let new = self.lock_unreachable().replace(line.clone()).as_deref() != Some(line.as_str());
        if new {
            tracing::error!(%error, "the app cannot obtain a token: the identity platform does not answer");
        }
        self.report();
    }

    /// Whether the app has obtained a token at least once.
    pub fn proven(&self) -> bool {
        self.app_proven.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the identity platform refuses the app now.
    pub fn app_refused(&self) -> bool {
        self.lock().contains_key("app")
    }

    /// The tenant's answer for the pod annotation, on every change.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.state.subscribe()
    }

    /// The refusal that matters most: the app's, else the most common.
    fn headline(&self) -> Option<SignInRefusal> {
        let refused = self.lock();
        if let Some(app) = refused.get("app") {
            return Some(*app);
        }
        let mut counts: BTreeMap<SignInRefusal, usize> = BTreeMap::new();
        for why in refused.values() {
            *counts.entry(*why).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(why, _)| why)
    }

    /// The refusals in force: who, and why.
    pub fn in_force(&self) -> Vec<(String, SignInRefusal)> {
        self.lock().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// One line for `/readyz` and status conditions: `None` when every sign-in works.
    pub fn summary(&self) -> Option<String> {
        let refused = self.lock();
        if let Some(app) = refused.get("app") {
            return Some(format!(
                "{} cannot sign in: {} ({})",
                self.app,
                app.reason(),
                app.fix()
            ));
        }
        let mut by_reason: BTreeMap<SignInRefusal, Vec<&str>> = BTreeMap::new();
        for (who, why) in refused.iter() {
            by_reason.entry(*why).or_default().push(who);
        }
        let parts: Vec<String> = by_reason
            .iter()
            .map(|(why, who)| {
                let named = match who.as_slice() {
                    [one] => (*one).to_owned(),
                    many => format!("{} shadow accounts (first {})", many.len(), many[0]),
                };
                format!("{named}: {} ({})", why.reason(), why.fix())
            })
            .collect();
        (!parts.is_empty()).then(|| format!("sign-in refused for {}", parts.join("; ")))
    }

    fn report(&self) {
        let summary = self.summary();
        let proven = self.proven();
        let unreachable = self.lock_unreachable().clone();
        let annotation = match (self.headline(), &summary) {
            (Some(why), Some(line)) => Some(format!("{why}: {line}")),
            _ if proven => Some("ok".to_owned()),
            // Nothing to say until the app's first answer, or its failure.
            _ => unreachable
                .as_ref()
                .map(|line| format!("{UNREACHABLE}: {line}")),
        };
        if let Some(annotation) = annotation {
            self.state.send_if_modified(|state| {
                let changed = state.as_deref() != Some(annotation.as_str());
                *state = Some(annotation);
                changed
            });
        }
        let Some(health) = &self.health else { return };
        match summary {
            Some(line) if self.app_refused() => health.not_ready(&line),
            _ if !proven => health.not_ready(unreachable.as_deref().unwrap_or(self.not_yet)),
            None => health.ready(),
            Some(line) => health.degraded(&line),
        }
    }

    fn lock_unreachable(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.unreachable.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SignInRefusal>> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_refusals_with_fixes() {
        assert_eq!(
            SignInRefusal::from_code(50076),
            Some(SignInRefusal::MfaRequired)
        );
        assert_eq!(
            SignInRefusal::from_code(53003),
            Some(SignInRefusal::ConditionalAccessBlocked)
        );
        assert_eq!(SignInRefusal::from_code(12345), None);
        assert_eq!(
            SignInRefusal::code_of(&[], "AADSTS50055: The password is expired."),
            Some(50055)
        );
        assert_eq!(SignInRefusal::code_of(&[65001], "whatever"), Some(65001));
        assert_eq!(SignInRefusal::code_of(&[], "no code"), None);
        assert!(
            SignInRefusal::MfaRegistrationRequired
                .fix()
                .contains("Security Defaults")
        );
        assert!(SignInRefusal::InvalidClientSecret.concerns_app());
        assert!(!SignInRefusal::MfaRequired.concerns_app());
    }

    #[test]
    fn the_monitor_reports_what_is_in_force_and_forgets_what_recovered() {
        let health = xmppfed_telemetry::Health::new();
        let monitor = SignInMonitor::new(&Metrics::new("t", "0"), health.component("tenant"));
        let (a, b) = (
            Identity::User("a@shadow.test".into()),
            Identity::User("b@shadow.test".into()),
        );
        let annotation = monitor.watch();
        // Unproven credentials are not ready, and an unreachable identity
        // platform is named (pod annotation included).
        assert!(!health.report().ready, "no token yet: not ready");
        monitor.unreachable(&Identity::App, "connection refused");
        assert!(!health.report().ready);
        assert!(
            health
                .report()
                .to_string()
                .contains("cannot reach the Microsoft identity platform: connection refused"),
            "{}",
            health.report()
        );
        assert_eq!(
            annotation.borrow().as_deref(),
            Some(
                "IdentityPlatformUnreachable: cannot reach the Microsoft identity platform: connection refused"
            )
        );
        monitor.signed_in(&Identity::App);
        assert_eq!(annotation.borrow().as_deref(), Some("ok"));
        assert!(health.report().ready, "the app's first token proves it");
        // Once proven, a passing outage changes nothing.
        monitor.unreachable(&Identity::App, "connection reset");
        assert!(health.report().ready);
        assert_eq!(annotation.borrow().as_deref(), Some("ok"));
        monitor.refused(&a, SignInRefusal::MfaRequired, "AADSTS50076");
        monitor.refused(&b, SignInRefusal::MfaRequired, "AADSTS50076");
        assert!(
            annotation.borrow().as_deref().is_some_and(
                |a| a.starts_with("MfaRequired: sign-in refused for 2 shadow accounts")
            ),
            "{:?}",
            annotation.borrow()
        );
        let report = health.report();
        assert!(report.ready, "shadow refusals leave the gateway ready");
        let line = monitor.summary().unwrap();
        assert!(
            line.contains("2 shadow accounts") && line.contains("MfaRequired"),
            "{line}"
        );
        assert!(
            report
                .to_string()
                .contains("tenant: degraded: sign-in refused"),
            "{report}"
        );
        monitor.refused(
            &Identity::App,
            SignInRefusal::ClientSecretExpired,
            "AADSTS7000222",
        );
        assert!(!health.report().ready, "the app refused: not ready");
        assert!(monitor.app_refused());
        monitor.signed_in(&Identity::App);
        monitor.signed_in(&a);
        monitor.signed_in(&b);
        assert_eq!(health.report().to_string(), "ok\n");
        assert_eq!(annotation.borrow().as_deref(), Some("ok"));
        // A spent refresh token is counted, never reported: the gateway recovers.
        monitor.refused(&a, SignInRefusal::RefreshTokenInvalid, "AADSTS70000");
        assert!(monitor.in_force().is_empty());
    }

    #[tokio::test]
    async fn a_shadow_tenant_is_watched_beside_the_home_tenant_and_named() {
        let health = xmppfed_telemetry::Health::new();
        let home = SignInMonitor::new(&Metrics::new("t", "0"), health.component("tenant"));
        let shadow = home.beside(health.component("shadow-tenant"));
        let mut both = SignInMonitor::watch_both(&home, &shadow);
        assert!(
            health
                .report()
                .to_string()
                .contains("the shadow tenant's app has not obtained a token"),
            "{}",
            health.report()
        );
        home.signed_in(&Identity::App);
        shadow.signed_in(&Identity::App);
        both.wait_for(|s| s.as_deref() == Some("ok")).await.unwrap();
        assert!(health.report().ready);
        // The shadow tenant's app refused: not ready, named, and the pod's
        // one annotation carries it though the home tenant is fine.
        shadow.refused(
            &Identity::App,
            SignInRefusal::InvalidClientSecret,
            "AADSTS7000215",
        );
        let line = shadow.summary().unwrap();
        assert!(
            line.starts_with("the shadow tenant's app cannot sign in"),
            "{line}"
        );
        assert!(!health.report().ready);
        let said = both
            .wait_for(|s| {
                s.as_deref()
                    .is_some_and(|s| s.starts_with("InvalidClientSecret"))
            })
            .await
            .unwrap()
            .clone();
        assert!(said.is_some_and(|s| s.contains("shadow tenant's app")));
    }
}
