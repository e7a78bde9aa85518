//! What the emulator's tests share: a tenant (Alice, Bob's shadow account,
//! the gateway's app and a weak one, a Teams SKU) and a client that holds
//! every request and answer to Microsoft's OpenAPI description.
#![allow(dead_code)]

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use xmppfed_e2e::graph::spec::spec;
use xmppfed_e2e::graph::{GraphEmulator, Seed};

pub const TENANT: &str = "7a1c6f5e-0000-4000-8000-00000000c0de";
pub const SKU: &str = "0c266dff-15dd-4b49-8397-2bb16070ed52";

pub fn seed(requests_per_10s: u32) -> Seed {
    serde_json::from_value(json!({
        "tenantId": TENANT,
        "requestsPer10s": requests_per_10s,
        "apps": [
            {"clientId": "gateway", "clientSecret": "s3cret",
             "roles": ["User.ReadWrite.All", "LicenseAssignment.ReadWrite.All", "Presence.ReadWrite.All", "ProfilePhoto.ReadWrite.All", "Chat.ReadBasic.All"],
             "scopes": ["Presence.ReadWrite", "Chat.ReadWrite", "Chat.Create", "ChatMessage.Send", "User.Read"]},
            {"clientId": "weak", "clientSecret": "weak", "roles": ["Presence.Read.All"]},
            {"clientId": "basic", "clientSecret": "basic", "roles": ["User.ReadBasic.All"]}
        ],
        "users": [
            {"id": "11111111-1111-4111-8111-111111111111", "userPrincipalName": "alice@contoso.com", "displayName": "Alice Teams",
             "givenName": "Alice", "surname": "Teams", "mail": "alice@contoso.com", "jobTitle": "Engineer", "businessPhones": ["+1 555 0100"]},
            {"userPrincipalName": "bob.xmpp@shadow.contoso.com", "displayName": "Bob (XMPP)", "password": "Sh4dow!pw"}
        ],
        "skus": [{"skuId": SKU, "skuPartNumber": "TEAMS_ESSENTIALS", "prepaidUnits": 1}]
    }))
    .unwrap()
}

pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub authority: String,
}

impl Client {
    pub fn new(emulator: &GraphEmulator) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Self {
            http: reqwest::Client::new(),
            base: emulator.graph_url(),
            authority: emulator.authority_url(),
        }
    }

    pub async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", self.authority))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap())
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    pub async fn refresh(&self, token: &str) -> (StatusCode, Value) {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("client_id", "gateway"),
            ("client_secret", "s3cret"),
            ("refresh_token", token),
        ])
        .await
    }

    /// The shadow account bob's delegated token (password grant).
    pub async fn shadow_token(&self) -> String {
        let (status, body) = self
            .token(&[
                ("grant_type", "password"),
                ("client_id", "gateway"),
                ("client_secret", "s3cret"),
                ("username", "bob.xmpp@shadow.contoso.com"),
                ("password", "Sh4dow!pw"),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn app_token(&self, id: &str, secret: &str) -> String {
        let (status, body) = self
            .token(&[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// A Graph call whose request and response are both held to the OpenAPI subset
    /// (operations the subset lacks are checked for Graph's error shape only).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let in_spec = spec()
            .find(method.as_str(), path.split('?').next().unwrap())
            .is_some();
        if in_spec {
            spec()
                .validate_request(
                    method.as_str(),
                    path.split('?').next().unwrap(),
                    body.as_ref(),
                )
                .unwrap_or_else(|e| panic!("request: {e}"));
        }
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        assert!(headers.contains_key("request-id"), "no request-id header");
        let text = response.text().await.unwrap();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        if in_spec {
            spec()
                .validate_response(
                    method.as_str(),
                    path.split('?').next().unwrap(),
                    status.as_u16(),
                    (!value.is_null()).then_some(&value),
                )
                .unwrap_or_else(|e| panic!("response: {e}"));
        } else if !status.is_success() {
            assert!(
                value["error"]["code"].is_string()
                    && value["error"]["innerError"]["request-id"].is_string(),
                "{value}"
            );
        }
        (status, value, headers)
    }
}
