//! `check-tenant` against the Graph emulator: a tenant ready for the gateway
//! passes every check; each way a tenant can be unready fails exactly the
//! check that names it, with the fix; what the app may not read is UNKNOWN,
//! not a failure. The binary exits 0 or 1 accordingly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use serde_json::{Value, json};
use xmppfed_config::GatewayConfig;
use xmppfed_config::StoreConfig;
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_gateway::bridge::contacts::credentials::CredentialCipher;
use xmppfed_gateway::preflight::{Check, Verdict, check_tenant, check_tenants, passed, render};
use xmppfed_gateway::store::{ShadowAccount, Store};

const APP: &str = "0f0f0f0f-1111-4222-8333-444444444444";
const SKU: &str = "6af4b3d6-14bb-4a2a-960c-6c902aad34f3";
const ROLES: &[&str] = &[
    "User.ReadWrite.All",
    "Presence.ReadWrite.All",
    "LicenseAssignment.ReadWrite.All",
    "ProfilePhoto.ReadWrite.All",
    "GroupMember.Read.All",
    "Policy.Read.All",
    "Domain.Read.All",
];

/// A tenant ready for the gateway, changed by `change`.
fn seed(change: impl FnOnce(&mut Value)) -> Seed {
    let mut seed = json!({
        "tenantId": "5c0ffee0-0000-4000-8000-0000000000c1",
        "apps": [{"clientId": APP, "clientSecret": "s3cret", "roles": ROLES,
                  "scopes": ["Chat.ReadWrite", "ChatMessage.Send", "Presence.ReadWrite"]}],
        "users": [{"userPrincipalName": "alice@contoso.com", "displayName": "Alice"}],
        "groups": [{"id": "9a1e2b3c-0000-4000-8000-0000000000f1", "displayName": "Teams users"}],
        "skus": [{"skuId": SKU, "skuPartNumber": "TEAMS_ESSENTIALS", "prepaidUnits": 5}],
        "domains": [{"id": "contoso.com"}, {"id": "shadow.contoso.com"}],
        "identity": {"conditionalAccess": [{"displayName": "Require MFA", "grant": "mfa",
                                            "excludeGroups": ["shadow-accounts"]}]}
    });
    change(&mut seed);
    serde_json::from_value(seed).unwrap()
}

fn config(emulator: &GatewayConfigInputs) -> GatewayConfig {
    GatewayConfig::from_toml_str(&format!(
        "[xmpp]\ndomain = \"teams.test\"\n[s2s]\nrequire_tls = false\n\
         [graph]\ntenant_id = \"{}\"\nclient_id = \"{APP}\"\nclient_secret = {{ file = \"{}\" }}\n\
         authority_url = \"{}\"\ngraph_url = \"{}\"\n\
         [shadow_accounts]\nupn_domain = \"shadow.contoso.com\"\nlicence_sku = \"{SKU}\"\nusage_location = \"GB\"\n\
         credential_key = {{ file = \"{}\" }}\n\
         [allow]\ninternal_groups = [\"9a1e2b3c-0000-4000-8000-0000000000f1\"]\n",
        emulator.tenant,
        emulator.secret.display(),
        emulator.authority,
        emulator.graph,
        emulator.secret.display(),
    ))
    .unwrap()
}

struct GatewayConfigInputs {
    tenant: String,
    authority: String,
    graph: String,
    secret: std::path::PathBuf,
}

async fn run(seed: Seed, secret: &str) -> (Vec<Check>, GatewayConfig, tempfile::TempDir) {
    run_with(seed, secret, |_| {}).await
}

async fn run_with(
    seed: Seed,
    secret: &str,
    change: impl FnOnce(&mut GatewayConfig),
) -> (Vec<Check>, GatewayConfig, tempfile::TempDir) {
    run_canary(seed, secret, change, None).await
}

/// A shadow account the gateway made earlier, in its store and the tenant.
struct Canary {
    jid: &'static str,
    upn: &'static str,
    password: &'static str,
}

const SHADOW: Canary = Canary {
    jid: "romeo@montague.example",
    upn: "xmpp.romeo@shadow.contoso.com",
    password: "Shadow-Pa55word!",
};

/// The run, with `canary` in the gateway's store (sealed under the test's
/// credential key, which is the secret file's "s3cret").
async fn run_canary(
    seed: Seed,
    secret: &str,
    change: impl FnOnce(&mut GatewayConfig),
    canary: Option<Canary>,
) -> (Vec<Check>, GatewayConfig, tempfile::TempDir) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emulator = GraphEmulator::start(seed).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, secret).unwrap();
    let config = config(&GatewayConfigInputs {
        tenant: emulator.tenant().id.clone(),
        authority: emulator.authority_url(),
        graph: emulator.graph_url(),
        secret: file,
    });
    let mut config = config;
    // Each run its own store (absent unless the test puts a shadow account in it).
    config.store = StoreConfig::Sqlite {
        path: dir.path().join("store.db"),
    };
    change(&mut config);
    if let Some(account) = &canary {
        let store = Store::open(&config.store).await.unwrap();
        let cipher = CredentialCipher::new("s3cret");
        store
            .put_shadow(&ShadowAccount {
                jid: account.jid.into(),
                upn: account.upn.into(),
                object_id: "unused-by-the-check".into(),
                credential: cipher.seal(account.jid, &account.password.into()).unwrap(),
                last_used: 0,
                created_at: 0,
            })
            .await
            .unwrap();
    }
    let graph = xmppfed_gateway::graph::from_config(
        config.graph.as_ref().unwrap(),
        xmppfed_gateway::graph::Budgets::uniform(100),
    )
    .unwrap();
    let checks = check_tenant(&config, &graph).await;
    // The emulator must outlive the checks only.
    drop(emulator);
    (checks, config, dir)
}

fn verdict<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {}", render(checks)))
}

#[tokio::test]
async fn a_ready_tenant_passes_every_check() {
    let (checks, _, _dir) = run(seed(|_| {}), "s3cret").await;
    let table = render(&checks);
    eprintln!("{table}");
    assert!(passed(&checks), "{table}");
    for name in [
        "app sign-in",
        "application permissions",
        "shadow domain",
        "licence",
        "Security Defaults",
        "Conditional Access",
    ] {
        assert_eq!(verdict(&checks, name).verdict, Verdict::Ok, "{table}");
    }
    assert!(
        verdict(&checks, "licence")
            .detail
            .contains("5 of 5 seats free"),
        "{table}"
    );
    assert!(
        verdict(&checks, "Conditional Access")
            .detail
            .contains("'Require MFA'"),
        "a policy with exclusions is named: {table}"
    );
    assert_eq!(
        verdict(&checks, "delegated consent").verdict,
        Verdict::Unknown
    );
}

#[tokio::test]
async fn each_unready_tenant_fails_the_check_that_names_it() {
    type Change = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Change, &str, &str)> = vec![
        (
            "Security Defaults on",
            Box::new(|s| s["identity"]["securityDefaults"] = json!("enforced")),
            "Security Defaults",
            "turn Security Defaults off",
        ),
        (
            "an MFA policy for everyone",
            Box::new(|s| {
                s["identity"]["conditionalAccess"] =
                    json!([{"displayName": "MFA for all", "grant": "mfa"}])
            }),
            "Conditional Access",
            "exclude them",
        ),
        (
            "a federated shadow domain",
            Box::new(|s| {
                s["domains"] =
                    json!([{"id": "shadow.contoso.com", "authenticationType": "Federated"}])
            }),
            "shadow domain",
            "managed (cloud-only) domain",
        ),
        (
            "an unknown shadow domain",
            Box::new(|s| s["domains"] = json!([{"id": "contoso.com"}])),
            "shadow domain",
            "add and verify it",
        ),
        (
            "no free seats",
            Box::new(|s| s["skus"][0]["prepaidUnits"] = json!(0)),
            "licence",
            "buy more seats",
        ),
        (
            "a SKU without Teams",
            Box::new(|s| s["skus"][0]["servicePlans"] = json!(["EXCHANGE_S_STANDARD"])),
            "licence",
            "includes Teams",
        ),
        (
            "a permission missing, a broad one granted",
            Box::new(|s| {
                s["apps"][0]["roles"] = json!([
                    "User.ReadWrite.All",
                    "Presence.ReadWrite.All",
                    "LicenseAssignment.ReadWrite.All",
                    "GroupMember.Read.All",
                    "Policy.Read.All",
                    "Domain.Read.All",
                    "Directory.ReadWrite.All"
                ])
            }),
            "application permissions",
            "grant admin consent",
        ),
    ];
    for (case, change, failing, fix) in cases {
        let (checks, _, _dir) = run(seed(change), "s3cret").await;
        let table = render(&checks);
        assert!(!passed(&checks), "{case}: {table}");
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .map(|c| c.name)
            .collect();
        assert_eq!(failed, [failing], "{case}: {table}");
        let check = verdict(&checks, failing);
        assert!(
            check.fix.as_deref().is_some_and(|f| f.contains(fix)),
            "{case}: {table}"
        );
        if failing == "application permissions" {
            assert!(
                check.detail.contains("missing: ProfilePhoto.ReadWrite.All")
                    && check
                        .detail
                        .contains("more than needed also granted: Directory.ReadWrite.All"),
                "{table}"
            );
        }
    }
}

#[tokio::test]
async fn what_the_app_may_not_read_is_unknown_and_a_refused_app_stops_at_once() {
    let (checks, _, _dir) = run(
        seed(|s| {
            s["apps"][0]["roles"] = json!(ROLES[..5]);
        }),
        "s3cret",
    )
    .await;
    let table = render(&checks);
    assert!(passed(&checks), "UNKNOWN is not a failure: {table}");
    for name in ["Security Defaults", "Conditional Access", "shadow domain"] {
        let check = verdict(&checks, name);
        assert_eq!(check.verdict, Verdict::Unknown, "{table}");
        assert!(
            check.fix.as_deref().is_some_and(|f| f.contains("grant")),
            "{table}"
        );
    }
    assert!(
        table.contains("Policy.Read.All") && table.contains("Domain.Read.All"),
        "{table}"
    );

    let (checks, _, _dir) = run(seed(|_| {}), "wrong").await;
    assert_eq!(checks.len(), 1, "{}", render(&checks));
    assert_eq!(checks[0].verdict, Verdict::Fail);
    assert!(
        checks[0]
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("create a new client secret")),
        "{}",
        render(&checks)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_prints_the_table_and_exits_0_or_1() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    for (seed, code) in [
        (seed(|_| {}), 0),
        (
            seed(|s| s["identity"]["securityDefaults"] = json!("enforced")),
            1,
        ),
    ] {
        let emulator = GraphEmulator::start(seed).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret").unwrap();
        let config = config(&GatewayConfigInputs {
            tenant: emulator.tenant().id.clone(),
            authority: emulator.authority_url(),
            graph: emulator.graph_url(),
            secret,
        });
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, config.to_toml_string().unwrap()).unwrap();
        // Blocking, off the runtime that serves the emulator.
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_xmppfed-gateway"))
                .args(["check-tenant", "--config"])
                .arg(&file)
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(code), "{stdout}");
        assert!(stdout.contains("OK      app sign-in"), "{stdout}");
        if code == 1 {
            assert!(stdout.contains("FAIL    Security Defaults"), "{stdout}");
            assert!(stdout.contains("the tenant is not ready"), "{stdout}");
        } else {
            assert!(
                stdout.contains("the tenant is ready for the gateway"),
                "{stdout}"
            );
        }
    }
}

#[tokio::test]
async fn an_administrative_unit_needs_only_read_permissions_and_the_scoped_role() {
    const UNIT: &str = "a0a0a0a0-0000-4000-8000-00000000a001";
    let minimal = |scoped: bool| {
        seed(move |s| {
            s["apps"][0]["roles"] = json!([
                "User.Read.All",
                "Presence.ReadWrite.All",
                "LicenseAssignment.Read.All",
                "GroupMember.Read.All",
                "Policy.Read.All",
                "Domain.Read.All"
            ]);
            if scoped {
                s["apps"][0]["scopedRoles"] =
                    json!([{"roleName": "User Administrator", "administrativeUnitId": UNIT}]);
            }
            s["administrativeUnits"] = json!([{"id": UNIT, "displayName": "XMPP contacts"}]);
        })
    };
    let with_unit = |config: &mut GatewayConfig| {
        config.shadow_accounts.administrative_unit = Some(UNIT.into());
    };
    let (checks, _, _dir) = run_with(minimal(true), "s3cret", with_unit).await;
    let table = render(&checks);
    assert!(passed(&checks), "{table}");
    assert_eq!(
        verdict(&checks, "administrative unit").verdict,
        Verdict::Ok,
        "{table}"
    );
    assert!(
        verdict(&checks, "administrative unit")
            .detail
            .contains("'XMPP contacts'"),
        "{table}"
    );

    let (checks, _, _dir) = run_with(minimal(false), "s3cret", with_unit).await;
    let table = render(&checks);
    let unit = verdict(&checks, "administrative unit");
    assert_eq!(unit.verdict, Verdict::Fail, "{table}");
    assert!(
        unit.fix
            .as_deref()
            .is_some_and(|f| f.contains("User Administrator role scoped to the unit")),
        "{table}"
    );
}

/// The seed with the canary's shadow account, in a group the MFA policy
/// excludes when `excluded`.
fn with_shadow(excluded: bool, change: impl FnOnce(&mut Value)) -> Seed {
    seed(|s| {
        s["users"].as_array_mut().unwrap().push(json!({
            "userPrincipalName": SHADOW.upn, "displayName": "Romeo (XMPP)",
            "password": SHADOW.password,
            "passwordPolicies": "DisablePasswordExpiration"}));
        let members = if excluded {
            json!([SHADOW.upn])
        } else {
            json!([])
        };
        s["groups"].as_array_mut().unwrap().push(
            json!({"id": "shadow-accounts", "displayName": "Shadow accounts", "members": members}),
        );
        change(s);
    })
}

#[tokio::test]
async fn a_shadow_account_signs_in_as_the_canary_and_shows_what_the_policies_only_suggest() {
    // Good tenant: the canary signs in, its token carries the delegated scopes.
    let (checks, _, _dir) =
        run_canary(with_shadow(true, |_| {}), "s3cret", |_| {}, Some(SHADOW)).await;
    let table = render(&checks);
    eprintln!("{table}");
    assert!(passed(&checks), "{table}");
    let canary = verdict(&checks, "shadow sign-in");
    assert_eq!(canary.verdict, Verdict::Ok, "{table}");
    assert!(canary.detail.contains(SHADOW.upn), "{table}");
    let consent = verdict(&checks, "delegated consent");
    assert_eq!(consent.verdict, Verdict::Ok, "{table}");
    assert!(consent.detail.contains("Chat.ReadWrite"), "{table}");

    // Each refusal only the sign-in itself shows: (case, seed, fix).
    type Change = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, bool, Change, &str, &str)> = vec![
        (
            // The policy has an exclusion (so the Conditional Access row is
            // OK), but the group it excludes misses the shadow account.
            "an exclusion that misses the shadow accounts",
            false,
            Box::new(|_| {}),
            "AADSTS50076",
            "exclude them",
        ),
        (
            "a federated shadow domain (ROPC cannot check the password)",
            true,
            Box::new(|s| {
                s["domains"] = json!([{"id": "contoso.com"},
                    {"id": "shadow.contoso.com", "authenticationType": "Federated"}])
            }),
            "AADSTS50126",
            "managed (not federated)",
        ),
        (
            "an expired password",
            true,
            Box::new(|s| {
                s["users"][1]["passwordPolicies"] = json!("None");
                s["identity"]["passwordValidityDays"] = json!(0);
            }),
            "AADSTS50055",
            "DisablePasswordExpiration",
        ),
        (
            "no admin consent for the delegated permissions",
            true,
            Box::new(|s| s["apps"][0]["scopes"] = json!([])),
            "AADSTS65001",
            "grant admin consent",
        ),
    ];
    for (case, excluded, change, code, fix) in cases {
        let (checks, _, _dir) = run_canary(
            with_shadow(excluded, change),
            "s3cret",
            |_| {},
            Some(SHADOW),
        )
        .await;
        let table = render(&checks);
        assert!(!passed(&checks), "{case}: {table}");
        let canary = verdict(&checks, "shadow sign-in");
        assert_eq!(canary.verdict, Verdict::Fail, "{case}: {table}");
        assert!(canary.detail.contains(code), "{case}: {table}");
        assert!(
            canary.fix.as_deref().is_some_and(|f| f.contains(fix)),
            "{case}: {table}"
        );
    }

    // Without a shadow account in the store there is nothing to sign in.
    let (checks, _, _dir) = run(with_shadow(true, |_| {}), "s3cret").await;
    let table = render(&checks);
    assert!(passed(&checks), "{table}");
    assert_eq!(
        verdict(&checks, "shadow sign-in").verdict,
        Verdict::Unknown,
        "{table}"
    );
    assert_eq!(
        verdict(&checks, "delegated consent").verdict,
        Verdict::Unknown,
        "{table}"
    );
}

/// A tenant of their own for the shadow accounts: the home tenant's app
/// needs only to read, the shadow tenant's is checked like a one-tenant
/// gateway's, each failure named by its tenant.
#[tokio::test]
async fn two_tenants_are_checked_each_for_what_it_holds() {
    const SHADOW_APP: &str = "0f0f0f0f-2222-4333-8444-555555555555";
    let run_two = |home_roles: Value, shadow_roles: Value| async move {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let home = GraphEmulator::start(seed(|s| {
            s["apps"][0]["roles"] = home_roles;
            // MFA for everyone at home: nothing of the gateway signs in there.
            s["identity"]["conditionalAccess"] =
                json!([{"displayName": "MFA for all", "grant": "mfa"}]);
        }))
        .await
        .unwrap();
        let shadow = GraphEmulator::start(seed(|s| {
            s["tenantId"] = json!("5c0ffee0-0000-4000-8000-0000000000c2");
            s["apps"][0]["clientId"] = json!(SHADOW_APP);
            s["apps"][0]["roles"] = shadow_roles;
        }))
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret").unwrap();
        let mut config = config(&GatewayConfigInputs {
            tenant: home.tenant().id.clone(),
            authority: home.authority_url(),
            graph: home.graph_url(),
            secret: file,
        });
        config.store = StoreConfig::Sqlite {
            path: dir.path().join("store.db"),
        };
        let mut tenant = config.graph.clone().unwrap();
        tenant.tenant_id = shadow.tenant().id.clone();
        tenant.client_id = SHADOW_APP.into();
        tenant.authority_url = Some(shadow.authority_url());
        tenant.graph_url = Some(shadow.graph_url());
        config.shadow_accounts.tenant = Some(tenant);
        config.validate().unwrap();
        let client = |c: &xmppfed_config::GraphConfig| {
            xmppfed_gateway::graph::from_config(c, xmppfed_gateway::graph::Budgets::uniform(100))
                .unwrap()
        };
        let (h, s) = (
            client(config.graph.as_ref().unwrap()),
            client(config.shadow_accounts.tenant.as_ref().unwrap()),
        );
        check_tenants(&config, &h, Some(&s)).await
    };
    let home_roles = json!(["User.Read.All", "Presence.Read.All", "GroupMember.Read.All"]);
    let checks = run_two(home_roles.clone(), json!(ROLES)).await;
    let table = render(&checks);
    eprintln!("{table}");
    assert!(passed(&checks), "{table}");
    for name in [
        "app sign-in",
        "application permissions",
        "shadow tenant: app sign-in",
        "shadow tenant: application permissions",
        "shadow domain",
        "licence",
        "Security Defaults",
    ] {
        assert_eq!(
            verdict(&checks, name).verdict,
            Verdict::Ok,
            "{name}: {table}"
        );
    }
    // The home tenant's MFA-for-all policy is not the shadow tenant's business.
    assert_eq!(
        verdict(&checks, "Conditional Access").verdict,
        Verdict::Ok,
        "{table}"
    );
    assert_eq!(
        verdict(&checks, "external access").verdict,
        Verdict::Unknown,
        "{table}"
    );

    // Write permissions at home are more than needed; the shadow tenant's
    // app without its own is a failure named by its tenant.
    let checks = run_two(
        json!([
            "User.ReadWrite.All",
            "Presence.Read.All",
            "GroupMember.Read.All"
        ]),
        json!(["User.ReadWrite.All", "Policy.Read.All", "Domain.Read.All"]),
    )
    .await;
    let table = render(&checks);
    let home = verdict(&checks, "application permissions");
    assert_eq!(home.verdict, Verdict::Ok, "{table}");
    assert!(
        home.detail
            .contains("more than needed also granted: User.ReadWrite.All"),
        "{table}"
    );
    let shadow = verdict(&checks, "shadow tenant: application permissions");
    assert_eq!(shadow.verdict, Verdict::Fail, "{table}");
    assert!(
        shadow.detail.contains("Presence.ReadWrite.All")
            && shadow.detail.contains("LicenseAssignment.ReadWrite.All"),
        "{table}"
    );
}
