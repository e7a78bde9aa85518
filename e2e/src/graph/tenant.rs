//! The emulated tenant: apps, users, groups, licences, photos and presence,
//! loaded from a seed file and kept in memory.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

/// The seed file (JSON): what the tenant holds at start.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    pub tenant_id: String,
    #[serde(default)]
    pub apps: Vec<AppSeed>,
    #[serde(default)]
    pub users: Vec<UserSeed>,
    #[serde(default)]
    pub groups: Vec<GroupSeed>,
    #[serde(default)]
    pub skus: Vec<SkuSeed>,
    /// Requests per app per 10 s before 429 (0: no limit).
    #[serde(default)]
    pub requests_per_10s: u32,
    /// How long an Available app presence session lasts without a
    /// keep-alive (Microsoft: 5 minutes); shorter in tests.
    #[serde(default)]
    pub presence_timeout_seconds: Option<u64>,
    /// Refuse app-only setStatusMessage (403), as a tenant may.
    #[serde(default)]
    pub refuse_app_status_message: bool,
    /// Microsoft's Teams and presence limits, enforced when present
    /// (`{}` for the published numbers).
    #[serde(default)]
    pub teams_limits: Option<super::throttling::TeamsLimits>,
    /// Security Defaults, Conditional Access, password expiry.
    #[serde(default)]
    pub identity: super::identity::IdentityPolicy,
    /// Whether Teams needs a licence, and how long it takes to provision one.
    #[serde(default)]
    pub teams: TeamsProvisioning,
    /// The tenant's domains; absent: every domain a user has is managed and verified.
    #[serde(default)]
    pub domains: Option<Vec<DomainSeed>>,
    #[serde(default)]
    pub administrative_units: Vec<AdministrativeUnitSeed>,
    /// How many Teams change-notification subscriptions the organisation may
    /// hold, all apps together (Microsoft: 10,000); smaller in tests.
    #[serde(default)]
    pub teams_subscription_quota: Option<usize>,
    /// Teams external access: the tenants whose users may be in this
    /// tenant's chats, and those users as federation shows them.
    #[serde(default)]
    pub federation: FederationSeed,
}

/// `federation` in the seed: Teams external access to other tenants
/// (https://learn.microsoft.com/microsoftteams/manage-external-access).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FederationSeed {
    /// Tenants external access allows (both ways: the other tenant's
    /// allowing this one is assumed).
    #[serde(default)]
    pub allowed_tenants: Vec<String>,
    /// Users of other tenants, by their own tenant's object id.
    #[serde(default)]
    pub users: Vec<ForeignUserSeed>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForeignUserSeed {
    pub id: String,
    pub tenant_id: String,
    pub display_name: String,
    #[serde(default)]
    pub user_principal_name: Option<String>,
}

/// `teams` in the seed file. Real Graph always requires the licence; the
/// default is off so that seeds with unlicensed test users stay short.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TeamsProvisioning {
    /// Chat calls of users without a licence are refused.
    #[serde(default)]
    pub require_licence: bool,
    /// Seconds after a licence is assigned before Teams is ready for the user.
    #[serde(default)]
    pub provisioning_delay_seconds: u64,
}

impl TeamsProvisioning {
    /// Whether Teams serves `user`'s own chat calls now.
    pub fn is_ready(&self, user: &User, now: Instant) -> bool {
        if !self.require_licence {
            return true;
        }
        !user.licences.is_empty()
            && user.licensed_at.is_some_and(|at| {
                now.saturating_duration_since(at)
                    >= Duration::from_secs(self.provisioning_delay_seconds)
            })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSeed {
    pub client_id: String,
    /// The app's secret; absent for an app that signs in with a certificate only.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// A registered certificate (PEM): client assertions must be signed by its key.
    #[serde(default)]
    pub certificate_pem: Option<String>,
    /// Application permissions granted (admin-consented), e.g. `User.ReadWrite.All`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Delegated permissions granted, e.g. `Presence.ReadWrite`, `Chat.ReadWrite`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Entra roles assigned to the app's service principal, scoped to an
    /// administrative unit (https://learn.microsoft.com/entra/identity/role-based-access-control/admin-units-assign-roles).
    #[serde(default)]
    pub scoped_roles: Vec<ScopedRole>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopedRole {
    /// Only `User Administrator` is understood: manage users (create,
    /// update, delete, licences, photos, passwords) within the unit.
    pub role_name: String,
    /// The unit the role is scoped to; absent: the whole directory (a
    /// tenant-wide User Administrator manages every non-admin user).
    #[serde(default)]
    pub administrative_unit_id: Option<String>,
}

/// https://learn.microsoft.com/graph/api/resources/administrativeunit
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdministrativeUnitSeed {
    pub id: String,
    pub display_name: String,
    /// Member users, by object id.
    #[serde(default)]
    pub members: Vec<String>,
}

/// Not `deny_unknown_fields`: every other property is the user's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserSeed {
    #[serde(default)]
    pub id: Option<String>,
    pub user_principal_name: String,
    pub display_name: String,
    #[serde(default)]
    pub password: Option<String>,
    /// Every other user property, as Graph names it (givenName, mail, jobTitle, …).
    #[serde(default, flatten)]
    pub properties: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupSeed {
    pub id: String,
    pub display_name: String,
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SkuSeed {
    pub sku_id: String,
    pub sku_part_number: String,
    pub prepaid_units: u32,
    /// Service plans the SKU contains, by name (e.g. `TEAMS1`); absent: Teams only.
    #[serde(default = "teams_plan")]
    pub service_plans: Vec<String>,
}

fn teams_plan() -> Vec<String> {
    vec!["TEAMS1".into()]
}

impl SkuSeed {
    /// A service plan's id: stable per SKU and plan name, GUID-shaped.
    pub fn plan_id(&self, plan: &str) -> String {
        use sha1::Digest as _;
        let h: String = sha1::Sha1::digest(format!("{}/{plan}", self.sku_id).as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// A domain of the tenant (https://learn.microsoft.com/graph/api/resources/domain).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainSeed {
    pub id: String,
    #[serde(default = "managed")]
    pub authentication_type: String,
    #[serde(default = "yes")]
    pub is_verified: bool,
}

fn managed() -> String {
    "Managed".into()
}

fn yes() -> bool {
    true
}

/// A presence session (an app's, or a Teams client's).
#[derive(Debug, Clone)]
pub struct Session {
    pub availability: String,
    pub activity: String,
    pub expires: Instant,
    /// An app session's last keep-alive (its last setPresence) and its
    /// timeout; `None` for sessions that do not time out here.
    pub keep_alive: Option<(Instant, Duration)>,
}

impl Session {
    /// The session's state now: an Available session not kept alive fades,
    /// to Available/AvailableInactive after one timeout and to Away/Away after
    /// another (https://learn.microsoft.com/graph/api/presence-setpresence,
    /// "Timeout, expiration, and keep alive").
    fn state(&self, now: Instant) -> (String, String) {
        match self.keep_alive {
            Some((at, timeout)) if self.availability == "Available" => {
                let idle = now.saturating_duration_since(at);
                if idle >= timeout * 2 {
                    ("Away".into(), "Away".into())
                } else if idle >= timeout {
                    ("Available".into(), "AvailableInactive".into())
                } else {
                    (self.availability.clone(), self.activity.clone())
                }
            }
            _ => (self.availability.clone(), self.activity.clone()),
        }
    }
}

/// Microsoft's presence-session timeout for an Available app session.
pub const PRESENCE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Default)]
pub struct Presence {
    pub sessions: HashMap<String, Session>,
    pub preferred: Option<Session>,
    pub status_message: Option<Value>,
    /// Set through the control API (Outlook's automatic replies in real life).
    pub out_of_office: Option<String>,
}

/// Session-level precedence (Microsoft: DoNotDisturb > Busy > Available > Away).
fn rank(availability: &str) -> u8 {
    match availability {
        "DoNotDisturb" => 5,
        "Busy" => 4,
        "Available" => 3,
        "BeRightBack" => 2,
        "Away" => 1,
        _ => 0,
    }
}

impl Presence {
    /// The aggregated state: the user's preferred presence over every
    /// session; among sessions the one of highest precedence; Offline if none.
    pub fn aggregate(&mut self, now: Instant) -> (String, String) {
        self.sessions.retain(|_, s| s.expires > now);
        if self.preferred.as_ref().is_some_and(|p| p.expires <= now) {
            self.preferred = None;
        }
        if let Some(p) = &self.preferred {
            return (p.availability.clone(), p.activity.clone());
        }
        self.sessions
            .values()
            .map(|s| s.state(now))
            .max_by_key(|(availability, _)| rank(availability))
            .unwrap_or_else(|| ("Offline".into(), "Offline".into()))
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub password: Option<String>,
    /// The user resource as Graph returns it (without `id`'s duplicates).
    pub properties: BTreeMap<String, Value>,
    pub photo: Option<(String, Vec<u8>)>,
    pub licences: Vec<String>,
    pub presence: Presence,
    /// When the password was last set (for the tenant's password expiry).
    pub password_set: Instant,
    /// When the user got its first licence (Teams provisioning starts then).
    pub licensed_at: Option<Instant>,
    /// Service plans turned off in the user's licences, by name.
    pub disabled_plans: Vec<String>,
}

impl User {
    pub fn upn(&self) -> &str {
        self.properties
            .get("userPrincipalName")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The resource, every property or those `$select` names.
    pub fn resource(&self, select: Option<&[String]>) -> Value {
        let mut out = serde_json::Map::new();
        out.insert("id".into(), json!(self.id));
        let default_props = [
            "businessPhones",
            "displayName",
            "givenName",
            "jobTitle",
            "mail",
            "mobilePhone",
            "officeLocation",
            "preferredLanguage",
            "surname",
            "userPrincipalName",
        ];
        match select {
            Some(fields) => {
                for f in fields {
                    if f != "id" {
                        out.insert(
                            f.clone(),
                            self.properties.get(f).cloned().unwrap_or_else(|| empty(f)),
                        );
                    }
                }
            }
            None => {
                for p in default_props {
                    let value = self.properties.get(p).cloned();
                    let value = value.unwrap_or_else(|| empty(p));
                    out.insert(p.into(), value);
                }
            }
        }
        Value::Object(out)
    }
}

/// A chat and its messages (newest last).
#[derive(Debug, Clone)]
pub struct Chat {
    pub id: String,
    pub chat_type: String,
    pub members: Vec<String>,
    pub created: String,
    pub messages: Vec<Value>,
}

/// A change-notification subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    pub resource: String,
    pub change_type: String,
    pub notification_url: String,
    pub lifecycle_url: Option<String>,
    pub client_state: Option<String>,
    pub expiration: k8s_openapi::jiff::Timestamp,
    pub application_id: String,
    pub creator_id: String,
}

/// What Graph shows for a property that has no value: collections are empty,
/// never null.
fn empty(property: &str) -> Value {
    match property {
        "businessPhones" | "imAddresses" | "otherMails" | "proxyAddresses" => json!([]),
        _ => Value::Null,
    }
}

/// Who a token speaks for.
#[derive(Debug, Clone)]
pub enum Principal {
    App {
        client_id: String,
        roles: Vec<String>,
    },
    User {
        client_id: String,
        user_id: String,
        scopes: Vec<String>,
    },
}

impl Principal {
    pub fn client_id(&self) -> &str {
        match self {
            Principal::App { client_id, .. } | Principal::User { client_id, .. } => client_id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Token {
    pub principal: Principal,
    pub expires: Instant,
}

/// Faults a test injects.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer the next `count` Graph requests with this status (429, 503, 504).
    pub status: Option<(u16, u32, u64)>,
}

impl Faults {
    pub fn clear(&mut self) {
        self.status = None;
    }
}

/// One user sign-in the token endpoint answered (its sign-in log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    /// `password` or `refresh_token`.
    pub grant: String,
    pub user_principal_name: String,
    /// The AADSTS code it was refused with; 0 when a token was issued.
    pub refused: u32,
}

#[derive(Debug, Default)]
pub struct Tenant {
    pub id: String,
    pub apps: Vec<AppSeed>,
    pub users: Vec<User>,
    pub groups: Vec<GroupSeed>,
    pub skus: Vec<SkuSeed>,
    pub tokens: HashMap<String, Token>,
    pub refresh_tokens: HashMap<String, (String, String)>,
    pub faults: Faults,
    pub requests_per_10s: u32,
    pub windows: HashMap<String, (Instant, u32)>,
    /// The presence-session timeout (`PRESENCE_TIMEOUT` unless seeded).
    pub presence_timeout: Duration,
    /// Whether the tenant takes setStatusMessage from an app (application
    /// permission); when false, app calls get 403.
    pub app_status_message: bool,
    /// Per-category Teams throttling (`teamsLimits` in the seed).
    pub throttling: super::throttling::Throttling,
    /// Every Graph request served, `METHOD path?query`, for tests to inspect.
    pub log: Vec<String>,
    pub chats: Vec<Chat>,
    pub subscriptions: Vec<Subscription>,
    /// Notifications to drop instead of delivering (fault injection).
    pub drop_notifications: u32,
    /// Delay before each notification is delivered (fault injection).
    pub notification_delay_ms: u64,
    /// Notifications delivered, as (subscription id, HTTP status of the receiver).
    pub delivered: Vec<(String, u16)>,
    /// Notifications waiting to be POSTed once the tenant is unlocked: (url, body, subscription id).
    pub outgoing: Vec<(String, Value, String)>,
    /// Token requests answered (any grant), for tests of token caching.
    pub token_requests: u32,
    /// User sign-ins asked for, in order: (grant type, userPrincipalName or
    /// refresh token's user id, AADSTS code of the refusal or 0).
    pub sign_ins: Vec<SignIn>,
    pub identity: super::identity::IdentityPolicy,
    pub teams: TeamsProvisioning,
    pub domains: Option<Vec<DomainSeed>>,
    pub administrative_units: Vec<AdministrativeUnitSeed>,
    /// Requests (and our own answers) whose body did not match Microsoft's OpenAPI description.
    pub violations: Vec<String>,
    /// The organisation's quota of Teams subscriptions (`TEAMS_SUBSCRIPTION_QUOTA` unless seeded).
    pub teams_subscription_quota: usize,
    pub federation: FederationSeed,
}

/// Subscriptions to Teams resources an organisation holds, all apps and
/// resources together
/// (https://learn.microsoft.com/graph/api/resources/change-notifications-api-overview).
pub const TEAMS_SUBSCRIPTION_QUOTA: usize = 10_000;

pub fn guid() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap_or_else(|e| panic!("no OS randomness: {e}"));
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Tenant {
    pub fn from_seed(seed: Seed) -> Self {
        let users = seed
            .users
            .into_iter()
            .map(|u| {
                let mut properties = u.properties;
                properties.insert("userPrincipalName".into(), json!(u.user_principal_name));
                properties.insert("displayName".into(), json!(u.display_name));
                User {
                    id: u.id.unwrap_or_else(guid),
                    password: u.password,
                    properties,
                    photo: None,
                    licences: Vec::new(),
                    presence: Presence::default(),
                    password_set: Instant::now(),
                    licensed_at: None,
                    disabled_plans: Vec::new(),
                }
            })
            .collect();
        Self {
            id: seed.tenant_id,
            apps: seed.apps,
            users,
            groups: seed.groups,
            skus: seed.skus,
            requests_per_10s: seed.requests_per_10s,
            throttling: super::throttling::Throttling::new(seed.teams_limits),
            presence_timeout: seed
                .presence_timeout_seconds
                .map_or(PRESENCE_TIMEOUT, Duration::from_secs),
            app_status_message: !seed.refuse_app_status_message,
            identity: seed.identity,
            teams: seed.teams,
            domains: seed.domains,
            administrative_units: seed.administrative_units,
            teams_subscription_quota: seed
                .teams_subscription_quota
                .unwrap_or(TEAMS_SUBSCRIPTION_QUOTA),
            federation: seed.federation,
            ..Self::default()
        }
    }

    /// Whether app `client_id` holds User Administrator over a unit that
    /// `target` (a unit id, or a user's id or UPN) is, or is a member of.
    pub fn user_admin_over(&self, client_id: &str, target: &str) -> bool {
        let Some(app) = self.apps.iter().find(|a| a.client_id == client_id) else {
            return false;
        };
        let user_id = self.user(target).map(|u| u.id.clone());
        let admin = || {
            app.scoped_roles
                .iter()
                .filter(|r| r.role_name == "User Administrator")
        };
        if admin().any(|r| r.administrative_unit_id.is_none()) && user_id.is_some() {
            return true;
        }
        admin()
            .filter_map(|r| {
                let unit = r.administrative_unit_id.as_deref()?;
                self.administrative_units
                    .iter()
                    .find(|u| u.id.eq_ignore_ascii_case(unit))
            })
            .any(|unit| {
                unit.id.eq_ignore_ascii_case(target)
                    || user_id
                        .as_ref()
                        .is_some_and(|id| unit.members.iter().any(|m| m.eq_ignore_ascii_case(id)))
            })
    }

    /// A user by object id or userPrincipalName (case-insensitive).
    pub fn user_mut(&mut self, key: &str) -> Option<&mut User> {
        self.users
            .iter_mut()
            .find(|u| u.id.eq_ignore_ascii_case(key) || u.upn().eq_ignore_ascii_case(key))
    }

    /// Queues a change notification for every subscription on `resource_matches`.
    pub fn notify(
        &mut self,
        matches: impl Fn(&str) -> bool,
        change_type: &str,
        resource: &str,
        data: Value,
    ) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let tenant_id = self.id.clone();
        let due: Vec<(String, Value, String)> = self
            .subscriptions
            .iter()
            .filter(|s| {
                s.expiration > now
                    && s.change_type.split(',').any(|c| c.trim() == change_type)
                    && matches(&s.resource)
            })
            .map(|s| {
                let body = json!({"value": [{
                    "subscriptionId": s.id,
                    "subscriptionExpirationDateTime": s.expiration.to_string(),
                    "changeType": change_type,
                    "resource": resource,
                    "resourceData": data,
                    "clientState": s.client_state,
                    "tenantId": tenant_id,
                }]});
                (s.notification_url.clone(), body, s.id.clone())
            })
            .collect();
        self.outgoing.extend(due);
    }

    /// A user of another tenant, by id or UPN.
    pub fn foreign(&self, key: &str) -> Option<&ForeignUserSeed> {
        self.federation.users.iter().find(|u| {
            u.id.eq_ignore_ascii_case(key)
                || u.user_principal_name
                    .as_deref()
                    .is_some_and(|upn| upn.eq_ignore_ascii_case(key))
        })
    }

    /// Whether `upn`'s domain is one of the tenant's federated domains.
    pub fn domain_is_federated(&self, upn: &str) -> bool {
        let Some((_, domain)) = upn.rsplit_once('@') else {
            return false;
        };
        self.domains.iter().flatten().any(|d| {
            d.id.eq_ignore_ascii_case(domain)
                && d.authentication_type.eq_ignore_ascii_case("Federated")
        })
    }

    pub fn user(&self, key: &str) -> Option<&User> {
        self.users
            .iter()
            .find(|u| u.id.eq_ignore_ascii_case(key) || u.upn().eq_ignore_ascii_case(key))
    }

    /// Counts a request against the app's window; `Some(retry_after)` when over.
    pub fn throttle(&mut self, client_id: &str, now: Instant) -> Option<u64> {
        if self.requests_per_10s == 0 {
            return None;
        }
        let window = Duration::from_secs(10);
        let entry = self.windows.entry(client_id.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        (entry.1 > self.requests_per_10s)
            .then(|| (window - now.duration_since(entry.0)).as_secs().max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(a: &str, secs: u64, now: Instant) -> Session {
        Session {
            availability: a.into(),
            activity: a.into(),
            expires: now + Duration::from_secs(secs),
            keep_alive: None,
        }
    }

    #[test]
    fn an_available_app_session_fades_unless_kept_alive() {
        let now = Instant::now();
        let mut p = Presence::default();
        let mut app = session("Available", 3600, now);
        app.keep_alive = Some((now, PRESENCE_TIMEOUT));
        p.sessions.insert("app".into(), app);
        let at = |m: u64| now + Duration::from_secs(m * 60);
        assert_eq!(p.aggregate(at(4)), ("Available".into(), "Available".into()));
        assert_eq!(
            p.aggregate(at(5)),
            ("Available".into(), "AvailableInactive".into())
        );
        assert_eq!(p.aggregate(at(10)), ("Away".into(), "Away".into()));
        // A Busy session does not time out, only expires.
        let mut busy = session("Busy", 3600, now);
        busy.keep_alive = Some((now, PRESENCE_TIMEOUT));
        p.sessions.insert("app".into(), busy);
        assert_eq!(p.aggregate(at(30)).0, "Busy");
    }

    #[test]
    fn presence_aggregates_by_precedence_and_expiry() {
        let now = Instant::now();
        let mut p = Presence::default();
        assert_eq!(p.aggregate(now).0, "Offline");
        p.sessions.insert("teams".into(), session("Away", 600, now));
        p.sessions.insert("app".into(), session("Busy", 60, now));
        assert_eq!(p.aggregate(now).0, "Busy");
        assert_eq!(
            p.aggregate(now + Duration::from_secs(61)).0,
            "Away",
            "the app session expired"
        );
        p.preferred = Some(session("DoNotDisturb", 3600, now));
        assert_eq!(
            p.aggregate(now + Duration::from_secs(62)).0,
            "DoNotDisturb",
            "preferred overrides"
        );
    }

    #[test]
    fn throttling_counts_per_app_window() {
        let mut t = Tenant {
            requests_per_10s: 2,
            ..Tenant::default()
        };
        let now = Instant::now();
        assert_eq!(t.throttle("a", now), None);
        assert_eq!(t.throttle("a", now), None);
        assert!(t.throttle("a", now).is_some());
        assert_eq!(t.throttle("b", now), None, "apps have their own budgets");
        assert_eq!(t.throttle("a", now + Duration::from_secs(11)), None);
    }
}
