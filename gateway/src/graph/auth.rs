//! Access tokens: the app's own (client credentials) and, per shadow
//! account, delegated ones (refresh tokens, which rotate and are kept in a
//! [`RefreshTokenVault`] across restarts; the password grant only when no
//! valid refresh token is left). Cached until shortly before they expire;
//! never logged. Refusals are typed ([`SignInRefusal`]) and reported to the
//! [`SignInMonitor`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::future::BoxFuture;
use rustls::SignatureScheme;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::SigningKey;
use xmpp_parsers::sha1::{Digest, Sha1};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::error::GraphError;
use super::sign_in::{SignInMonitor, SignInRefusal};

/// Where each shadow account's latest refresh token is kept, so that a
/// restart does not sign every account in again with its password.
pub trait RefreshTokenVault: Send + Sync {
    fn load<'a>(&'a self, upn: &'a str) -> BoxFuture<'a, Option<SecretString>>;
    /// Keeps `token` as the account's latest (`None`: forget it).
    fn save<'a>(&'a self, upn: &'a str, token: Option<&'a SecretString>) -> BoxFuture<'a, ()>;
}

/// Keeps refresh tokens in memory only (tests and tools).
#[derive(Default)]
pub struct MemoryVault(std::sync::Mutex<HashMap<String, SecretString>>);

impl RefreshTokenVault for MemoryVault {
    fn load<'a>(&'a self, upn: &'a str) -> BoxFuture<'a, Option<SecretString>> {
        let found = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(upn)
            .cloned();
        Box::pin(async move { found })
    }

    fn save<'a>(&'a self, upn: &'a str, token: Option<&'a SecretString>) -> BoxFuture<'a, ()> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match token {
            Some(t) => map.insert(upn.to_owned(), t.clone()),
            None => map.remove(upn),
        };
        Box::pin(async {})
    }
}

/// Renew this long before a token expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// Who a call is made as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The gateway's app registration (application permissions).
    App,
    /// A shadow account, by userPrincipalName (delegated permissions).
    User(String),
}

/// What the gateway holds to sign a shadow account in.
#[derive(Clone)]
pub struct UserCredential {
    pub upn: String,
    pub password: SecretString,
}

impl std::fmt::Debug for UserCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCredential")
            .field("upn", &self.upn)
            .finish_non_exhaustive()
    }
}

struct Cached {
    access: SecretString,
    expires: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
}

/// How the app proves itself to the token endpoint.
enum AppCredential {
    Secret(SecretString),
    /// A certificate registered on the app: each request carries a fresh
    /// RS256 client assertion signed with its key (x5t = SHA-1 of the cert).
    Certificate {
        thumbprint: String,
        key: Arc<dyn SigningKey>,
    },
}

/// Loads a PEM certificate and its RSA private key for client assertions.
pub fn load_certificate(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Vec<u8>, PrivateKeyDer<'static>), GraphError> {
    let cert = CertificateDer::from_pem_file(cert_file).map_err(|e| {
        GraphError::Config(format!(
            "graph.client_certificate.cert_file {}: {e}",
            cert_file.display()
        ))
    })?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        GraphError::Config(format!(
            "graph.client_certificate.key_file {}: {e}",
            key_file.display()
        ))
    })?;
    Ok((cert.to_vec(), key))
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub struct Tokens {
    http: reqwest::Client,
    endpoint: String,
    client_id: String,
    /// The Graph service tokens are for (the `.default` scope's resource).
    resource: String,
    credential: AppCredential,
    cache: Mutex<HashMap<Identity, Cached>>,
    /// Latest refresh token per shadow account (they rotate on each use).
    refresh: Arc<dyn RefreshTokenVault>,
    monitor: Arc<SignInMonitor>,
}

impl std::fmt::Debug for AppCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppCredential::Secret(_) => "Secret(..)",
            AppCredential::Certificate { .. } => "Certificate(..)",
        })
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn new(
        http: reqwest::Client,
        authority_url: &str,
        tenant_id: &str,
        client_id: &str,
        client_secret: SecretString,
    ) -> Self {
        Self {
            http,
            endpoint: format!(
                "{}/{tenant_id}/oauth2/v2.0/token",
                authority_url.trim_end_matches('/')
            ),
            client_id: client_id.to_owned(),
            resource: xmppfed_config::Cloud::Global.graph_resource().to_owned(),
            credential: AppCredential::Secret(client_secret),
            cache: Mutex::new(HashMap::new()),
            refresh: Arc::new(MemoryVault::default()),
            monitor: Arc::new(SignInMonitor::detached()),
        }
    }

    /// Keeps refresh tokens in `vault` (the store, sealed) instead of memory.
    pub fn with_vault(mut self, vault: Arc<dyn RefreshTokenVault>) -> Self {
        self.refresh = vault;
        self
    }

    /// Asks for tokens to `resource` (the cloud's Graph, e.g.
    /// `https://graph.microsoft.us`) instead of the global service's.
    pub fn with_resource(mut self, resource: &str) -> Self {
        self.resource = resource.trim_end_matches('/').to_owned();
        self
    }

    /// Reports refusals to `monitor`.
    pub fn with_monitor(mut self, monitor: Arc<SignInMonitor>) -> Self {
        self.monitor = monitor;
        self
    }

    pub fn monitor(&self) -> &Arc<SignInMonitor> {
        &self.monitor
    }

    /// The app signs in with a certificate instead of a secret.
    pub fn with_certificate(
        http: reqwest::Client,
        authority_url: &str,
        tenant_id: &str,
        client_id: &str,
        cert_der: &[u8],
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, GraphError> {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| GraphError::Config(format!("graph.client_certificate.key_file: {e}")))?;
        if key
            .choose_scheme(&[SignatureScheme::RSA_PKCS1_SHA256])
            .is_none()
        {
            return Err(GraphError::Config(
                "graph.client_certificate: Microsoft Entra takes RSA keys for client assertions"
                    .into(),
            ));
        }
        let thumbprint = b64url(&Sha1::digest(cert_der));
        let mut tokens = Self::new(
            http,
            authority_url,
            tenant_id,
            client_id,
            SecretString::from(String::new()),
        );
        tokens.credential = AppCredential::Certificate { thumbprint, key };
        Ok(tokens)
    }

    /// A fresh client assertion (RFC 7523): valid 10 minutes, for our token endpoint only.
    fn assertion(&self, thumbprint: &str, key: &Arc<dyn SigningKey>) -> Result<String, GraphError> {
        let now = crate::clock::now();
        let mut jti = [0u8; 16];
        crate::random::fill(&mut jti);
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": thumbprint});
        let claims = serde_json::json!({"aud": self.endpoint, "iss": self.client_id, "sub": self.client_id,
            "jti": b64url(&jti), "nbf": now, "iat": now, "exp": now + 600});
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signer = key
            .choose_scheme(&[SignatureScheme::RSA_PKCS1_SHA256])
            .ok_or_else(|| GraphError::Config("the certificate key cannot sign RS256".into()))?;
        let signature = signer
            .sign(signing_input.as_bytes())
            .map_err(|e| GraphError::Config(format!("signing the client assertion: {e}")))?;
        Ok(format!("{signing_input}.{}", b64url(&signature)))
    }

    /// A valid access token for `identity`, from the cache when it has one.
    pub async fn get(
        &self,
        identity: &Identity,
        credential: Option<&UserCredential>,
    ) -> Result<SecretString, GraphError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.get(identity)
            && cached.expires > Instant::now() + RENEW_BEFORE
        {
            return Ok(cached.access.clone());
        }
        let response = match identity {
            Identity::App => {
                let scope = format!("{}/.default", self.resource);
                self.request(
                    identity,
                    &[("grant_type", "client_credentials"), ("scope", &scope)],
                )
                .await
            }
            Identity::User(upn) => self.user_token(identity, upn, credential).await,
        };
        let response = match response {
            Ok(r) => {
                self.monitor.signed_in(identity);
                r
            }
            Err(e) => {
                if let GraphError::SignInRefused {
                    refusal,
                    description,
                    ..
                } = &e
                {
                    self.monitor.refused(identity, *refusal, description);
                } else if let GraphError::Transport(error) = &e {
                    self.monitor.unreachable(identity, error);
                }
                return Err(e);
            }
        };
        let access = SecretString::from(response.access_token);
        cache.insert(
            identity.clone(),
            Cached {
                access: access.clone(),
                expires: Instant::now() + Duration::from_secs(response.expires_in),
            },
        );
        Ok(access)
    }

    /// Signs `credential` in with its password, outside the cache and the
    /// vault (a check must not spend the gateway's refresh token); the
    /// delegated access token it got.
    pub async fn password_probe(
        &self,
        credential: &UserCredential,
    ) -> Result<SecretString, GraphError> {
        let identity = Identity::User(credential.upn.clone());
        let response = self.password_grant(&identity, credential).await?;
        Ok(SecretString::from(response.access_token))
    }

    /// The password grant (ROPC) for a shadow account, with refresh tokens.
    async fn password_grant(
        &self,
        identity: &Identity,
        credential: &UserCredential,
    ) -> Result<TokenResponse, GraphError> {
        let scope = format!("{}/.default offline_access", self.resource);
        self.request(
            identity,
            &[
                ("grant_type", "password"),
                ("username", &credential.upn),
                ("password", credential.password.expose_secret()),
                ("scope", &scope),
            ],
        )
        .await
    }

    /// Forgets a token Graph refused (revoked, or the account changed).
    pub async fn invalidate(&self, identity: &Identity) {
        self.cache.lock().await.remove(identity);
    }

    /// The refresh token first (from memory or the vault); the password only
    /// when there is none or the platform says it is spent.
    async fn user_token(
        &self,
        identity: &Identity,
        upn: &str,
        credential: Option<&UserCredential>,
    ) -> Result<TokenResponse, GraphError> {
        let scope = format!("{}/.default offline_access", self.resource);
        let mut response = None;
        if let Some(refresh) = self.refresh.load(upn).await {
            match self
                .request(
                    identity,
                    &[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", refresh.expose_secret()),
                        ("scope", &scope),
                    ],
                )
                .await
            {
                Ok(r) => response = Some(r),
                // Expired, revoked or spent: sign in again below.
                Err(e)
                    if e.sign_in_refusal() == Some(SignInRefusal::RefreshTokenInvalid)
                        || matches!(e, GraphError::Token { .. }) =>
                {
                    self.monitor
                        .refused(identity, SignInRefusal::RefreshTokenInvalid, "");
                    self.refresh.save(upn, None).await;
                }
                // Any other refusal (MFA, Conditional Access…) would refuse
                // the password too: report it rather than try.
                Err(e) => return Err(e),
            }
        }
        let response = match response {
            Some(r) => r,
            None => {
                let credential = credential
                    .ok_or_else(|| GraphError::Config(format!("no credential for {upn}")))?;
                self.password_grant(identity, credential).await?
            }
        };
        if let Some(next) = &response.refresh_token {
            self.refresh
                .save(upn, Some(&SecretString::from(next.clone())))
                .await;
        }
        Ok(response)
    }

    async fn request(
        &self,
        identity: &Identity,
        grant: &[(&str, &str)],
    ) -> Result<TokenResponse, GraphError> {
        let assertion;
        let mut form: Vec<(&str, &str)> = vec![("client_id", &self.client_id)];
        match &self.credential {
            AppCredential::Secret(secret) => form.push(("client_secret", secret.expose_secret())),
            AppCredential::Certificate { thumbprint, key } => {
                assertion = self.assertion(thumbprint, key)?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                form.push(("client_assertion", &assertion));
            }
        }
        form.extend_from_slice(grant);
        let body =
            serde_urlencoded::to_string(&form).map_err(|e| GraphError::Decode(e.to_string()))?;
        let grant_type = grant
            .iter()
            .find(|(k, _)| *k == "grant_type")
            .map_or("", |(_, v)| *v);
        let span = tracing::info_span!("graph.token", grant_type);
        let response = tracing::Instrument::instrument(
            self.http
                .post(&self.endpoint)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body)
                .send(),
            span,
        )
        .await
        .map_err(GraphError::transport)?;
        let status = response.status();
        let bytes = super::reply::read_body(response, "token response").await?;
        if status.is_success() {
            serde_json::from_slice(&bytes)
                .map_err(|e| GraphError::Decode(format!("token response: {e}")))
        } else {
            let error: TokenError =
                serde_json::from_slice(&bytes).map_err(|_| GraphError::Token {
                    error: status.to_string(),
                    description: String::new(),
                })?;
            let code = SignInRefusal::code_of(&error.error_codes, &error.error_description);
            match code.and_then(|c| SignInRefusal::from_code(c).map(|r| (c, r))) {
                Some((code, refusal)) => Err(GraphError::SignInRefused {
                    who: match identity {
                        Identity::App => format!("the app {}", self.client_id),
                        Identity::User(upn) => format!("shadow account {upn}"),
                    },
                    refusal,
                    code,
                    description: error.error_description,
                }),
                None => Err(GraphError::Token {
                    error: error.error,
                    description: error.error_description,
                }),
            }
        }
    }
}
