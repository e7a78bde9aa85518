//! The canary: one shadow account's real sign-in, which shows what the
//! tenant's policies decide for the shadow accounts themselves.

use base64::Engine as _;
use secrecy::ExposeSecret;
use xmppfed_config::{GatewayConfig, StoreConfig};

use super::Check;
use crate::bridge::contacts::credentials::CredentialCipher;
use crate::graph::{GraphClient, SignInRefusal, UserCredential};
use crate::store::Store;

/// Delegated permissions the shadow accounts' calls need: create, read and
/// send in 1:1 chats (Chat.ReadWrite covers ChatMessage.Send), set presence.
pub const DELEGATED_SCOPES: &[&str] = &["Chat.ReadWrite", "Presence.ReadWrite"];

const CONSENT_FIX: &str = "Entra admin center > App registrations > the app > API permissions: add Chat.ReadWrite, Presence.ReadWrite and offline_access as Delegated permissions and grant admin consent";

/// The canary: the first shadow account in the store, for a real sign-in.
/// `Ok(None)`: the gateway has made none yet.
pub async fn first_shadow_account(
    config: &GatewayConfig,
) -> Result<Option<UserCredential>, String> {
    if let StoreConfig::Sqlite { path } = &config.store
        && !path.exists()
    {
        // Opening would create an empty store: there is nothing in it.
        return Ok(None);
    }
    let key = config
        .shadow_accounts
        .credential_key
        .as_ref()
        .ok_or("shadow_accounts.credential_key is not set")?
        .resolve()
        .map_err(|e| e.to_string())?;
    let store = Store::open(&config.store)
        .await
        .map_err(|e| format!("cannot open the store: {e}"))?;
    let accounts = store
        .unused_shadows(i64::MAX)
        .await
        .map_err(|e| format!("cannot read the store: {e}"))?;
    let Some(account) = accounts.into_iter().next() else {
        return Ok(None);
    };
    let password = CredentialCipher::new(key.expose())
        .open(&account.jid, &account.credential)
        .map_err(|e| e.to_string())?;
    Ok(Some(UserCredential {
        upn: account.upn,
        password,
    }))
}

/// A real password sign-in of one shadow account: what Conditional Access,
/// Security Defaults, password expiry and the domain's federation decide for
/// the accounts themselves, which the policies read above only suggest.
/// Then the delegated permissions its token carries (`scp`).
pub async fn canary(
    graph: &GraphClient,
    account: Result<Option<UserCredential>, String>,
) -> Vec<Check> {
    const NAME: &str = "shadow sign-in";
    const CONSENT: &str = "delegated consent";
    let account = match account {
        Ok(Some(account)) => account,
        Ok(None) => {
            return vec![
                Check::unknown(
                    NAME,
                    "no shadow account yet: the first one's sign-in shows it (TenantReady on the FederationGateway, /readyz)",
                    "run check-tenant again once a remote contact has written to a Teams user",
                ),
                Check::unknown(
                    CONSENT,
                    "not visible to the app: a shadow account's sign-in shows it",
                    CONSENT_FIX,
                ),
            ];
        }
        Err(e) => {
            return vec![Check::unknown(
                NAME,
                format!("no shadow account to sign in: {e}"),
                "run check-tenant with the gateway's own config and store",
            )];
        }
    };
    let token = match graph.tokens().password_probe(&account).await {
        Ok(token) => token,
        Err(e) => {
            let refusal = e.sign_in_refusal();
            let mut checks = vec![Check::fail(
                NAME,
                format!("{} refused: {e}", account.upn),
                refusal.map_or("see the error", SignInRefusal::fix),
            )];
            if refusal == Some(SignInRefusal::ConsentRequired) {
                checks.push(Check::fail(CONSENT, "not granted", CONSENT_FIX));
            }
            return checks;
        }
    };
    let signed_in = Check::ok(
        NAME,
        format!(
            "{} signed in with its password: no MFA, block or expiry applies to it",
            account.upn
        ),
    );
    let consent = match delegated_scopes(token.expose_secret()) {
        None => Check::unknown(CONSENT, "the token's scopes are not readable", CONSENT_FIX),
        Some(granted) => {
            let missing: Vec<&str> = DELEGATED_SCOPES
                .iter()
                .copied()
                .filter(|s| !granted.iter().any(|g| g.eq_ignore_ascii_case(s)))
                .collect();
            if missing.is_empty() {
                Check::ok(CONSENT, format!("granted: {}", granted.join(" ")))
            } else {
                Check::fail(
                    CONSENT,
                    format!("missing: {}", missing.join(", ")),
                    CONSENT_FIX,
                )
            }
        }
    };
    vec![signed_in, consent]
}

/// The `scp` claim of a delegated access token. Graph's tokens are not meant
/// for clients to read; a diagnosis may, and says UNKNOWN when it cannot.
fn delegated_scopes(jwt: &str) -> Option<Vec<String>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(
        claims
            .get("scp")?
            .as_str()?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}
