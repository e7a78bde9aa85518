//! Shadow accounts against the Graph emulator and the SQLite store: created
//! once with the contact's card and the licence, the password stored only
//! encrypted and good for signing in, taken over if the store lost it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

mod common;

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::json;
use xmpp_parsers::minidom::Element;
use xmppfed_e2e::graph::{GraphEmulator, Seed};
use xmppfed_gateway::bridge::contacts::credentials::CredentialCipher;
use xmppfed_gateway::bridge::contacts::shadow::{ShadowError, ShadowSettings, ensure, upn_for};
use xmppfed_gateway::graph::RetryPolicy;
use xmppfed_gateway::store::Store;

const TENANT: &str = "5c0ffee0-0000-4000-8000-0000000000aa";
const SKU: &str = "6af4b3d6-14bb-4a2a-960c-6c902aad34f3";

fn seed() -> Seed {
    serde_json::from_value(json!({
        "tenantId": TENANT,
        "apps": [{"clientId": "gateway", "clientSecret": "s3cret",
                  "roles": ["User.ReadWrite.All", "LicenseAssignment.ReadWrite.All", "ProfilePhoto.ReadWrite.All"],
                  "scopes": ["Presence.ReadWrite"]}],
        "skus": [{"skuId": SKU, "skuPartNumber": "TEAMS_ESSENTIALS", "prepaidUnits": 10}]
    }))
    .unwrap()
}

#[tokio::test]
async fn a_contact_gets_one_licensed_shadow_account_with_its_card() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emulator = GraphEmulator::start(seed()).await.unwrap();
    let graph = common::graph_client(&emulator, "gateway", "s3cret", RetryPolicy::default());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::sqlite(&dir.path().join("db")).await.unwrap();
    let cipher = CredentialCipher::new("credential key of this gateway");
    let settings = ShadowSettings {
        upn_domain: "shadow.contoso.com".into(),
        licence_sku: Some(SKU.into()),
        display_name_suffix: " (XMPP)".into(),
        usage_location: Some("GB".into()),
        administrative_unit: None,
    };
    let card: Element = "<vCard xmlns='vcard-temp'><FN>Bob Builder</FN><TITLE>Foreman</TITLE>\
        <PHOTO><TYPE>image/png</TYPE><BINVAL>iVBORw==</BINVAL></PHOTO></vCard>"
        .parse()
        .unwrap();
    let jid = "bob@xmpp.partner.example";
    let (account, credential) = ensure(&graph, &store, &cipher, &settings, jid, Some(&card))
        .await
        .unwrap();
    assert_eq!(account.upn, upn_for(jid, "shadow.contoso.com"));
    let user = graph.get_user(&account.upn).await.unwrap();
    assert_eq!(
        (user.display_name.as_deref(), user.job_title.as_deref()),
        (Some("Bob Builder (XMPP)"), Some("Foreman"))
    );
    assert!(
        graph.get_photo(&account.object_id).await.unwrap().is_some(),
        "the card's photo"
    );
    assert_eq!(
        emulator.tenant().user(&account.upn).unwrap().licences,
        [SKU]
    );

    // Stored encrypted, and good for signing in as the account.
    let stored = store.shadow(jid).await.unwrap().unwrap();
    let clear = credential.password.expose_secret().as_bytes().to_vec();
    assert!(
        !stored
            .credential
            .windows(clear.len())
            .any(|w| w == clear.as_slice()),
        "no clear text in the store"
    );
    graph
        .set_own_presence(
            &credential,
            "gateway",
            "Available",
            "Available",
            Duration::from_secs(600),
        )
        .await
        .unwrap();

    // Once per contact.
    let (again, _) = ensure(&graph, &store, &cipher, &settings, jid, Some(&card))
        .await
        .unwrap();
    assert_eq!(again.object_id, account.object_id);
    assert_eq!(emulator.tenant().users.len(), 1);

    // A store that lost it (a new one): the tenant's account is taken over,
    // not duplicated — which resets its password, and Graph lets an app do
    // that only through a directory role: refused without it, with the fix.
    let fresh = Store::sqlite(&dir.path().join("other-db")).await.unwrap();
    let refused = ensure(&graph, &fresh, &cipher, &settings, jid, None)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ShadowError::TakeOverRefused { .. })
            && refused.to_string().contains("User Administrator"),
        "{refused}"
    );
    emulator.tenant().apps[0].scoped_roles =
        serde_json::from_value(json!([{"roleName": "User Administrator"}])).unwrap();
    let (taken, new_credential) = ensure(&graph, &fresh, &cipher, &settings, jid, None)
        .await
        .unwrap();
    assert_eq!(taken.object_id, account.object_id);
    assert_eq!(emulator.tenant().users.len(), 1);
    graph
        .set_own_presence(
            &new_credential,
            "gateway",
            "Away",
            "Away",
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert!(
        emulator.tenant().violations.is_empty(),
        "{:?}",
        emulator.tenant().violations
    );
}

/// With an administrative unit the app holds no tenant-wide write
/// permission: User Administrator scoped to the unit creates, licenses and
/// updates the shadow accounts, which are created inside the unit.
#[tokio::test]
async fn shadow_accounts_live_in_an_administrative_unit_the_app_manages() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    const UNIT: &str = "a0a0a0a0-0000-4000-8000-00000000a001";
    let seed = |scoped: bool| -> Seed {
        let roles = if scoped {
            json!([{"roleName": "User Administrator", "administrativeUnitId": UNIT}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "tenantId": TENANT,
            "apps": [{"clientId": "gateway", "clientSecret": "s3cret",
                      "roles": ["User.Read.All", "LicenseAssignment.Read.All"],
                      "scopes": ["Presence.ReadWrite"], "scopedRoles": roles}],
            "skus": [{"skuId": SKU, "skuPartNumber": "TEAMS_ESSENTIALS", "prepaidUnits": 10}],
            "administrativeUnits": [{"id": UNIT, "displayName": "XMPP contacts"}]
        }))
        .unwrap()
    };
    let settings = ShadowSettings {
        upn_domain: "shadow.contoso.com".into(),
        licence_sku: Some(SKU.into()),
        display_name_suffix: " (XMPP)".into(),
        usage_location: Some("GB".into()),
        administrative_unit: Some(UNIT.into()),
    };
    let card: Element = "<vCard xmlns='vcard-temp'><FN>Bob Builder</FN><TITLE>Foreman</TITLE>\
        <PHOTO><TYPE>image/png</TYPE><BINVAL>iVBORw==</BINVAL></PHOTO></vCard>"
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cipher = CredentialCipher::new("credential key of this gateway");
    let jid = "bob@xmpp.partner.example";

    let emulator = GraphEmulator::start(seed(true)).await.unwrap();
    let graph = common::graph_client(&emulator, "gateway", "s3cret", RetryPolicy::default());
    let store = Store::sqlite(&dir.path().join("db")).await.unwrap();
    let (account, _) = ensure(&graph, &store, &cipher, &settings, jid, Some(&card))
        .await
        .unwrap();
    {
        let tenant = emulator.tenant();
        assert_eq!(
            tenant.administrative_units[0].members,
            std::slice::from_ref(&account.object_id)
        );
        let user = tenant.user(&account.upn).unwrap();
        assert_eq!(user.licences, [SKU]);
        assert_eq!(user.properties["jobTitle"], "Foreman");
        assert!(user.photo.is_some());
        assert!(tenant.violations.is_empty(), "{:?}", tenant.violations);
    }

    // The same app without the scoped role may create nobody.
    let emulator = GraphEmulator::start(seed(false)).await.unwrap();
    let graph = common::graph_client(&emulator, "gateway", "s3cret", RetryPolicy::default());
    let store = Store::sqlite(&dir.path().join("db2")).await.unwrap();
    let refused = ensure(&graph, &store, &cipher, &settings, jid, None).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("403")),
        "{refused:?}"
    );
    assert!(emulator.tenant().users.is_empty());
}
