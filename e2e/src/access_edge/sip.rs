//! The fake Access Edge's own SIP text handling: deliberately not the
//! gateway's parser (`crates/sipfed`), so a misreading of RFC 3261 there is
//! not repeated here. Enough of RFC 3261 §7 for what an edge exchanges:
//! a start line, headers (compact forms of §7.3.3 folded to full names),
//! a Content-Length body.

/// Bounds on what a peer may send (a real edge has them too).
pub const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sip {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// RFC 3261 §7.3.3 compact forms, and §20's names.
fn full_name(name: &str) -> String {
    let full = match name.to_ascii_lowercase().as_str() {
        "i" => "Call-ID",
        "f" => "From",
        "t" => "To",
        "v" => "Via",
        "l" => "Content-Length",
        "c" => "Content-Type",
        "m" => "Contact",
        "k" => "Supported",
        _ => return name.to_owned(),
    };
    full.to_owned()
}

/// What a read of the stream yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    Message(Sip),
    /// RFC 5626 §3.5.1: a double CRLF asks for a single CRLF back.
    Ping,
    Pong,
}

/// Cuts the next item from `buffer`; `Ok(None)` until it is complete.
pub fn next(buffer: &mut Vec<u8>) -> Result<Option<Item>, String> {
    if buffer.starts_with(b"\r\n\r\n") {
        buffer.drain(..4);
        return Ok(Some(Item::Ping));
    }
    if buffer == b"\r\n" {
        buffer.clear();
        return Ok(Some(Item::Pong));
    }
    if buffer.starts_with(b"\r\n") && buffer.len() > 2 && buffer[2] != b'\r' {
        buffer.drain(..2);
        return Ok(Some(Item::Pong));
    }
    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buffer.len() > MAX_MESSAGE {
            return Err("a header block past 64 KiB".into());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..end]).map_err(|_| "headers not UTF-8")?;
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or("a header line without a colon")?;
        headers.push((full_name(name.trim()), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .ok_or("no Content-Length (required over TLS by RFC 3261 §18.3)")?
        .1
        .parse()
        .map_err(|_| "a Content-Length that is not a number")?;
    if end + 4 + length > MAX_MESSAGE {
        return Err("a message past 64 KiB".into());
    }
    if buffer.len() < end + 4 + length {
        return Ok(None);
    }
    let body = buffer[end + 4..end + 4 + length].to_vec();
    buffer.drain(..end + 4 + length);
    Ok(Some(Item::Message(Sip {
        start,
        headers,
        body,
    })))
}

impl Sip {
    pub fn request(start: String, headers: Vec<(String, String)>, body: Vec<u8>) -> Self {
        Self {
            start,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn method(&self) -> Option<&str> {
        let first = self.start.split(' ').next()?;
        (first != "SIP/2.0").then_some(first)
    }

    pub fn status(&self) -> Option<u16> {
        let mut parts = self.start.split(' ');
        (parts.next()? == "SIP/2.0").then_some(())?;
        parts.next()?.parse().ok()
    }

    /// Call-ID and CSeq: one transaction.
    pub fn transaction(&self) -> Option<(String, String)> {
        Some((
            self.header("Call-ID")?.to_owned(),
            self.header("CSeq")?.to_owned(),
        ))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A response to this request (RFC 3261 §8.2.6.2): Via, From, Call-ID
    /// and CSeq copied, To with `tag` when it had none.
    pub fn response(&self, status: u16, reason: &str, tag: &str) -> Sip {
        let mut headers = Vec::new();
        for (name, value) in &self.headers {
            match name.as_str() {
                "Via" | "From" | "Call-ID" | "CSeq" => headers.push((name.clone(), value.clone())),
                "To" if !value.contains(";tag=") => {
                    headers.push((name.clone(), format!("{value};tag={tag}")));
                }
                "To" => headers.push((name.clone(), value.clone())),
                _ => {}
            }
        }
        Sip {
            start: format!("SIP/2.0 {status} {reason}"),
            headers,
            body: Vec::new(),
        }
    }

    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (name, value) in &self.headers {
            if !name.eq_ignore_ascii_case("Content-Length") {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// The address of record in a From/To/Contact value, lower case.
pub fn aor(value: &str) -> Option<String> {
    let inner = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next()?,
    };
    let aor = inner.split(';').next()?.trim().to_ascii_lowercase();
    aor.starts_with("sip:").then_some(aor)
}

/// The domain of a `sip:user@domain` address.
pub fn domain_of(aor: &str) -> Option<String> {
    let rest = aor.strip_prefix("sip:")?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    host.split([':', ';']).next().map(str::to_owned)
}

/// A `tag` parameter of a From/To value.
pub fn tag(value: &str) -> Option<String> {
    value
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag="))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_forms_and_keepalives() {
        let mut buffer =
            b"\r\n\r\nMESSAGE sip:a@b SIP/2.0\r\ni: x\r\nl: 2\r\nCSeq: 1 MESSAGE\r\n\r\nhi"
                .to_vec();
        assert_eq!(next(&mut buffer), Ok(Some(Item::Ping)));
        let Ok(Some(Item::Message(m))) = next(&mut buffer) else {
            panic!("a message")
        };
        assert_eq!(m.header("call-id"), Some("x"));
        assert_eq!(m.text(), "hi");
        assert!(buffer.is_empty());
        let mut missing = b"MESSAGE sip:a@b SIP/2.0\r\ni: x\r\n\r\n".to_vec();
        assert!(next(&mut missing).is_err());
    }
}
