//! A SIP message as the edge handles it: its first line, its headers (by
//! name, compact forms read as their long names) and its body.

use bytes::Bytes;
use ezk_sip_types::msg::{Line, MessageLine, PullParser};
use ezk_sip_types::parse::Parse;
use ezk_sip_types::print::AppendCtx;
use ezk_sip_types::{Headers, Method, Name};

/// Why bytes are not a SIP message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("the message head is not UTF-8")]
    NotUtf8,
    #[error("the message head is incomplete")]
    Incomplete,
    #[error("not a SIP request or status line: {0}")]
    FirstLine(String),
    #[error("not a header line: {0}")]
    HeaderLine(String),
}

#[derive(Debug, Clone)]
pub struct Message {
    pub line: MessageLine,
    pub headers: Headers,
    pub body: Bytes,
}

/// A line as text for an error, cut short.
fn shown(line: &str) -> String {
    line.chars().take(80).collect()
}

impl Message {
    /// Parses a message whose head ends at `head_len` (framing found it).
    pub fn parse(frame: &Bytes, head_len: usize) -> Result<Self, ParseError> {
        let head = frame.get(..head_len).ok_or(ParseError::Incomplete)?;
        let mut lines = PullParser::new(head, 0);
        let first = match lines.next() {
            Some(Ok(line)) => std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?,
            _ => return Err(ParseError::Incomplete),
        };
        let line = match MessageLine::parse(frame)(first) {
            Ok(("", line)) => line,
            _ => return Err(ParseError::FirstLine(shown(first))),
        };
        let mut headers = Headers::new();
        for raw in lines {
            let raw = raw.map_err(|_| ParseError::Incomplete)?;
            let text = std::str::from_utf8(raw).map_err(|_| ParseError::NotUtf8)?;
            match Line::parse(frame, text) {
                Ok((_, parsed)) => headers.insert(parsed.name, parsed.value),
                Err(_) => return Err(ParseError::HeaderLine(shown(text))),
            }
        }
        Ok(Self {
            line,
            headers,
            body: frame.slice(head_len.min(frame.len())..),
        })
    }

    /// The request's method, `None` for a response.
    pub fn method(&self) -> Option<&Method> {
        self.line.request_method()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &Name) -> Option<&str> {
        self.headers.get_raw(name).next().map(|v| v.as_str())
    }

    /// Its transaction's identity, the same in the request, its responses and
    /// a retransmission: Call-ID and CSeq (number and method).
    pub fn transaction_id(&self) -> Option<String> {
        let call_id = self.header(&Name::CALL_ID)?;
        let cseq = self.header(&Name::CSEQ)?;
        Some(format!(
            "{call_id} {}",
            cseq.split_whitespace().collect::<Vec<_>>().join(" ")
        ))
    }

    /// The message as it goes on the wire, its Content-Length set from the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut headers = self.headers.clone();
        headers.remove(&Name::CONTENT_LENGTH);
        headers.insert(Name::CONTENT_LENGTH, self.body.len().to_string());
        let mut out = format!("{}\r\n{headers}\r\n", self.line.default_print_ctx()).into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    /// A response to this request with `code` and `reason`: Via, From, To,
    /// Call-ID and CSeq copied as RFC 3261 §8.2.6.2 says, a To tag added when
    /// the request had none (`tag`).
    pub fn response(&self, code: u16, reason: &str, tag: &str) -> Message {
        let mut headers = Headers::new();
        for name in [Name::VIA, Name::FROM, Name::TO, Name::CALL_ID, Name::CSEQ] {
            for value in self.headers.get_raw(&name) {
                let value = if name == Name::TO && !value.contains(";tag=") {
                    format!("{value};tag={tag}")
                } else {
                    value.to_string()
                };
                headers.insert(name.clone(), value);
            }
        }
        let status = Bytes::from(format!("SIP/2.0 {code} {reason}"));
        let line = std::str::from_utf8(&status)
            .ok()
            .and_then(|text| MessageLine::parse(&status)(text).ok())
            .map(|(_, line)| line)
            // A status line we wrote ourselves always parses.
            .unwrap_or_else(|| self.line.clone());
        Message {
            line,
            headers,
            body: Bytes::new(),
        }
    }

    /// A message we compose as text (head lines joined by CRLF, no body).
    pub fn from_head(lines: &[String]) -> Result<Self, ParseError> {
        let frame = Bytes::from(format!("{}\r\n\r\n", lines.join("\r\n")));
        let head_len = frame.len();
        Self::parse(&frame, head_len)
    }
}

/// A response's status code (0 for a request).
pub fn status_of(message: &Message) -> u16 {
    match &message.line {
        MessageLine::Response(line) => line.code.into_u16(),
        MessageLine::Request(_) => 0,
    }
}

/// The host of the top Via's sent-by.
pub(crate) fn via_host(request: &Message) -> Option<String> {
    let via = request.header(&Name::VIA)?;
    let sent_by = via.split_whitespace().nth(1)?;
    let host = sent_by.split([';', ':']).next()?;
    Some(host.to_ascii_lowercase())
}

/// The domain of the From URI (its address of record, without a port).
pub(crate) fn from_host(request: &Message) -> Option<String> {
    let aor = crate::im::address(request.header(&Name::FROM)?)?;
    let rest = aor.split_once(':')?.1;
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    host_port.split(':').next().map(str::to_owned)
}

/// A random token for tags, branches and Call-IDs (128 bits, hex).
pub(crate) fn token() -> String {
    let mut bytes = [0u8; 16];
    let random = rustls::crypto::aws_lc_rs::default_provider().secure_random;
    if random.fill(&mut bytes).is_err() {
        // Without randomness nothing secure runs; a clock-based token keeps
        // transactions apart meanwhile.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
