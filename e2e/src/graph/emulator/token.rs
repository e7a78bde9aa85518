//! The identity platform's token endpoint (`/{tenant}/oauth2/v2.0/token`):
//! client credentials (secret or certificate assertion), password and
//! refresh-token grants, with the AADSTS errors Microsoft documents.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Shared, lock, now_string};
use crate::graph::tenant::{AppSeed, Principal, SignIn, Tenant, Token, guid};

pub(super) fn aad_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description}"),
        "error_codes": [code],
        "timestamp": now_string(),
        "trace_id": guid(),
        "correlation_id": guid(),
    });
    (status, axum::Json(body)).into_response()
}

/// An access token shaped as Entra issues them: a JWT whose claims carry
/// the app's granted `roles` (application) or `scp` (delegated), which a
/// client may read and only Graph may verify
/// (https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference).
fn access_token(mut claims: Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    claims["uti"] = json!(guid());
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "emulator"});
    format!(
        "{}.{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string()),
        b64.encode(guid())
    )
}

fn log_sign_in(t: &mut Tenant, grant: &str, upn: &str, refused: u32) {
    t.sign_ins.push(SignIn {
        grant: grant.to_owned(),
        user_principal_name: upn.to_owned(),
        refused,
    });
}

/// The form fields of a token request.
struct Form(Vec<(String, String)>);

impl Form {
    fn field(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How long the tokens issued now live: (seconds, when, `exp` claim).
fn lifetime() -> (u64, Instant, i64) {
    let expires_in = 3599u64;
    let exp = k8s_openapi::jiff::Timestamp::now().as_second() + expires_in as i64;
    (
        expires_in,
        Instant::now() + Duration::from_secs(expires_in),
        exp,
    )
}

/// POST /{tenant}/oauth2/v2.0/token: client credentials (secret), password
/// (resource owner, for shadow accounts) and refresh_token (rotated).
pub(super) async fn token(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let form = Form(serde_urlencoded::from_bytes(&body).unwrap_or_default());
    let mut t = lock(&state);
    t.token_requests += 1;
    let app = match client(&t, &tenant, &form) {
        Ok(app) => app,
        Err(refused) => return *refused,
    };
    match form.field("grant_type") {
        Some("client_credentials") => app_token(&mut t, app, &form),
        Some(grant @ ("password" | "refresh_token")) => user_token(&mut t, app, &form, grant),
        other => aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!(
                "The app requested an unsupported grant type '{}'.",
                other.unwrap_or("")
            ),
        ),
    }
}

/// The tenant, the app and its credential (a secret, or a certificate's
/// signed assertion), each refused with its AADSTS code.
fn client(t: &Tenant, tenant: &str, form: &Form) -> Result<AppSeed, Box<Response>> {
    if !tenant.eq_ignore_ascii_case(&t.id) {
        return Err(Box::new(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        )));
    }
    let Some(app) = t
        .apps
        .iter()
        .find(|a| Some(a.client_id.as_str()) == form.field("client_id"))
        .cloned()
    else {
        return Err(Box::new(aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "Application not found in the directory.",
        )));
    };
    if let Some(assertion) = form.field("client_assertion") {
        if form.field("client_assertion_type")
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(Box::new(aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                "Invalid client_assertion_type.",
            )));
        }
        if let Err(why) = verify_assertion(&app, assertion, tenant) {
            return Err(Box::new(aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700027,
                &format!("Client assertion failed signature validation: {why}"),
            )));
        }
    } else if app.client_secret.is_none()
        || form.field("client_secret") != app.client_secret.as_deref()
    {
        return Err(Box::new(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        )));
    }
    Ok(app)
}

/// Client credentials: an app-only token carrying the app's granted roles.
fn app_token(t: &mut Tenant, app: AppSeed, form: &Form) -> Response {
    if form.field("scope") != Some("https://graph.microsoft.com/.default") {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
        );
    }
    let (expires_in, expires, exp) = lifetime();
    let access = access_token(json!({"aud": "https://graph.microsoft.com", "tid": t.id,
        "appid": app.client_id, "idtyp": "app", "roles": app.roles, "exp": exp}));
    t.tokens.insert(
        access.clone(),
        Token {
            principal: Principal::App {
                client_id: app.client_id,
                roles: app.roles,
            },
            expires,
        },
    );
    axum::Json(json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": access})).into_response()
}

/// The user a password or refresh-token grant names (object id).
fn grant_user(
    t: &mut Tenant,
    app: &AppSeed,
    form: &Form,
    grant: &str,
) -> Result<String, Box<Response>> {
    if grant == "password" {
        let (Some(username), Some(password)) = (form.field("username"), form.field("password"))
        else {
            return Err(Box::new(aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'username' and 'password'.",
            )));
        };
        // A federated domain's users are redirected to their own identity
        // provider, where Entra cannot check a password: ROPC fails for them
        // whatever the password (https://learn.microsoft.com/entra/identity-platform/v2-oauth-ropc,
        // "hybrid identity federation scenarios"). The exact code depends on
        // the AD FS set-up; 50126 is what a tenant without password hash
        // validation answers.
        let federated = t.domain_is_federated(username);
        return match t.user(username) {
            Some(u) if !federated && u.password.as_deref() == Some(password) => Ok(u.id.clone()),
            _ => {
                log_sign_in(t, "password", username, 50126);
                Err(Box::new(aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    50126,
                    "Error validating credentials due to invalid username or password.",
                )))
            }
        };
    }
    // Refresh tokens rotate: each is good for one redemption (spent once a
    // new one is issued).
    match t
        .refresh_tokens
        .get(form.field("refresh_token").unwrap_or_default())
    {
        Some((client, user)) if *client == app.client_id => Ok(user.clone()),
        _ => Err(Box::new(aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            70000,
            "The provided grant is invalid or malformed.",
        ))),
    }
}

/// Password and refresh-token grants: a delegated token and a new refresh
/// token, unless the tenant's sign-in policies refuse the user.
fn user_token(t: &mut Tenant, app: AppSeed, form: &Form, grant: &str) -> Response {
    let user_id = match grant_user(t, &app, form, grant) {
        Ok(user_id) => user_id,
        Err(refused) => return *refused,
    };
    let Some(user) = t.user(&user_id).cloned() else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            50034,
            "The user account does not exist in the directory.",
        );
    };
    // Policies are evaluated at every issuance, refresh included
    // (https://learn.microsoft.com/entra/identity/conditional-access/concept-continuous-access-evaluation).
    if let Some((error, code, description)) =
        t.identity.refuse(&app, &user, &t.groups, Instant::now())
    {
        log_sign_in(t, grant, user.upn(), code);
        return aad_error(StatusCode::BAD_REQUEST, error, code, &description);
    }
    log_sign_in(t, grant, user.upn(), 0);
    if let Some(presented) = form.field("refresh_token") {
        t.refresh_tokens.remove(presented);
    }
    let refresh = guid() + &guid();
    t.refresh_tokens
        .insert(refresh.clone(), (app.client_id.clone(), user_id.clone()));
    let scope = app.scopes.join(" ");
    let (expires_in, expires, exp) = lifetime();
    let access = access_token(json!({"aud": "https://graph.microsoft.com", "tid": t.id,
        "appid": app.client_id, "idtyp": "user", "oid": user_id, "upn": user.upn(), "scp": scope, "exp": exp}));
    t.tokens.insert(
        access.clone(),
        Token {
            principal: Principal::User {
                client_id: app.client_id,
                user_id,
                scopes: app.scopes,
            },
            expires,
        },
    );
    axum::Json(json!({"token_type": "Bearer", "scope": scope, "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": access, "refresh_token": refresh})).into_response()
}

/// Checks an RFC 7523 client assertion the way Entra does: RS256, `x5t` of the
/// app's registered certificate, signature, audience, issuer and subject, time.
pub(super) fn verify_assertion(app: &AppSeed, jwt: &str, tenant: &str) -> Result<(), String> {
    use base64::Engine as _;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use sha1::Digest as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pem = app
        .certificate_pem
        .as_deref()
        .ok_or("no certificate is registered for the app")?;
    let cert = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("registered certificate: {e}"))?;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err("not a JWT".into());
    };
    let decode = |s: &str| -> Result<Value, String> {
        let bytes = b64.decode(s).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    let (header_json, claims_json) = (decode(header)?, decode(claims)?);
    if header_json["alg"] != json!("RS256") {
        return Err("alg must be RS256".into());
    }
    let thumbprint = b64.encode(sha1::Sha1::digest(cert.as_ref()));
    if header_json["x5t"].as_str() != Some(thumbprint.as_str()) {
        return Err("x5t does not name the registered certificate".into());
    }
    let signature = b64.decode(signature).map_err(|e| e.to_string())?;
    let end_entity = webpki::EndEntityCert::try_from(&cert).map_err(|e| e.to_string())?;
    end_entity
        .verify_signature(
            webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
            format!("{header}.{claims}").as_bytes(),
            &signature,
        )
        .map_err(|e| format!("signature: {e}"))?;
    let audience = claims_json["aud"].as_str().unwrap_or_default();
    if !audience.ends_with(&format!("/{tenant}/oauth2/v2.0/token")) {
        return Err(format!("aud {audience} is not this token endpoint"));
    }
    if claims_json["iss"] != json!(app.client_id) || claims_json["sub"] != json!(app.client_id) {
        return Err("iss and sub must be the client id".into());
    }
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let exp = claims_json["exp"].as_i64().unwrap_or(0);
    let nbf = claims_json["nbf"].as_i64().unwrap_or(0);
    if exp <= now || nbf > now + 300 {
        return Err("the assertion is expired or not yet valid".into());
    }
    Ok(())
}
