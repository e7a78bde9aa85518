//! Reading Graph's replies (token endpoint included) with a bound on their size.

use super::error::GraphError;

/// The most of one Graph reply we hold. The largest a Graph call of ours
/// legitimately returns is a profile photo (4 MB at most: "Get profilePhoto",
/// Microsoft Graph v1.0) or a page of users; a reply past this is refused,
/// not buffered, whatever its `Content-Length` claimed.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Reads a reply's body, at most [`MAX_RESPONSE_BYTES`] of it.
pub(super) async fn read_body(
    mut response: reqwest::Response,
    what: &str,
) -> Result<bytes::Bytes, GraphError> {
    let too_large = || {
        GraphError::Decode(format!(
            "{what}: reply larger than {MAX_RESPONSE_BYTES} bytes"
        ))
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(GraphError::transport)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
