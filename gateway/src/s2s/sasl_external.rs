//! SASL EXTERNAL (RFC 6120 §6, XEP-0178), both directions: a peer whose
//! certificate proves its domain authenticates without dialback, and so do we
//! with ours where the peer offers it.

use futures::{SinkExt, StreamExt};
use tokio_xmpp::xmlstream::StreamHeader;
use xmpp_parsers::stream_features::StreamFeatures;

use super::wire::{self, Control, Stream};
use super::{Shared, limits};

/// Inbound: checks an `<auth/>`. The authorization identity (or, when empty,
/// the stream's `from`) must be the domain the certificate proved, and allowed.
pub fn check(
    shared: &Shared,
    mechanism: Option<&str>,
    initial: &str,
    proven: Option<&str>,
) -> Result<String, String> {
    if mechanism != Some("EXTERNAL") {
        return Err(format!("mechanism {mechanism:?} is not offered"));
    }
    let Some(proven) = proven else {
        return Err("no certificate valid for the stream's domain".into());
    };
    let authzid = if initial.is_empty() || initial == "=" {
        proven.to_owned()
    } else {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(initial)
            .map_err(|e| format!("authorization identity is not base64: {e}"))?;
        String::from_utf8(bytes)
            .map_err(|_| "authorization identity is not UTF-8".to_owned())?
            .to_ascii_lowercase()
    };
    if authzid != proven {
        return Err(format!("the certificate is for {proven}, not {authzid}"));
    }
    if !shared.allow.allows(&authzid) {
        return Err(format!("{authzid} is not allowed"));
    }
    Ok(authzid)
}

/// Outbound: how the peer answered our EXTERNAL.
pub enum Outcome {
    /// Authenticated; the restarted stream, its features and its id.
    Success(Stream, StreamFeatures, String),
    /// Refused: dialback on the same stream.
    Refused(Stream),
}

/// Outbound: our certificate speaks for our domain; on success the stream
/// restarts and is authenticated.
pub async fn authenticate(
    shared: &Shared,
    domain: &str,
    mut stream: Stream,
) -> std::io::Result<Outcome> {
    stream
        .send(&wire::out::sasl_external(&shared.domain))
        .await?;
    let answer = match stream.next().await {
        Some(Ok(element)) => Control::parse(element.into_element()),
        other => {
            return Err(std::io::Error::other(format!(
                "no answer to SASL: {other:?}"
            )));
        }
    };
    match answer {
        Control::SaslSuccess => {
            stream.get_stream().get_ref().expect_header();
            let mut opened = stream
                .initiate_reset()
                .send_header(StreamHeader {
                    from: Some(shared.domain.clone().into()),
                    to: Some(domain.to_owned().into()),
                    id: None,
                })
                .await?;
            let id = opened
                .take_header()
                .id
                .map(|id| id.into_owned())
                .unwrap_or_default();
            let (features, stream) = limits::recv_features(opened).await?;
            shared.metrics.auth("sasl-external-out", "valid");
            Ok(Outcome::Success(stream, features, id))
        }
        Control::SaslFailure(reason) => {
            shared.metrics.auth("sasl-external-out", "refused");
            tracing::info!(?reason, "SASL EXTERNAL refused; trying dialback");
            Ok(Outcome::Refused(stream))
        }
        other => Err(std::io::Error::other(format!(
            "unexpected answer to SASL: {other:?}"
        ))),
    }
}
