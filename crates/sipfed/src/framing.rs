//! SIP messages cut from a stream (RFC 3261 §18.3: over TLS every message
//! carries Content-Length), and the keep-alives of RFC 5626 §3.5.1 between
//! them: a double CRLF is a ping, answered with a single CRLF (the pong).
//! Everything a peer sends is bounded before it is parsed: the whole
//! message, the number of header lines, and the head's time to arrive is the
//! connection's (edge.rs).

use bytes::{Buf, Bytes, BytesMut};
use ezk_sip_types::msg::PullParser;

use crate::message::{Message, ParseError};

/// What one peer may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Head and body together. Microsoft's IM bodies are small; SIP's own
    /// framing caps a message at 65,535 bytes in practice.
    pub max_message: usize,
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message: 64 * 1024,
            max_headers: 100,
        }
    }
}

#[derive(Debug)]
pub enum Frame {
    Message(Box<Message>),
    /// A double CRLF: answer with a single one.
    Ping,
    /// A single CRLF: the answer to our ping.
    Pong,
}

/// Why a stream cannot go on: the connection is closed after it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {0} header lines")]
    TooManyHeaders(usize),
    #[error("no valid Content-Length (required over TLS)")]
    ContentLength,
    #[error(transparent)]
    Parse(#[from] ParseError),
}

#[derive(Debug, Default)]
pub struct Framer {
    buffer: BytesMut,
    limits: Limits,
}

impl Framer {
    pub fn new(limits: Limits) -> Self {
        Self {
            buffer: BytesMut::new(),
            limits,
        }
    }

    /// Adds what was read; refuses to hold more than one message's worth.
    pub fn push(&mut self, data: &[u8]) -> Result<(), FrameError> {
        if self.buffer.len() + data.len() > self.limits.max_message + 4 {
            return Err(FrameError::TooLarge(self.limits.max_message));
        }
        self.buffer.extend_from_slice(data);
        Ok(())
    }

    /// The next complete frame, `None` until one is.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        match self.buffer.as_ref() {
            [] | [b'\r'] | [b'\r', b'\n'] | [b'\r', b'\n', b'\r'] => return Ok(None),
            [b'\r', b'\n', b'\r', b'\n', ..] => {
                self.buffer.advance(4);
                return Ok(Some(Frame::Ping));
            }
            [b'\r', b'\n', ..] => {
                self.buffer.advance(2);
                return Ok(Some(Frame::Pong));
            }
            _ => {}
        }
        let Some((head_len, body_len)) = self.head()? else {
            return Ok(None);
        };
        let total = head_len + body_len;
        if total > self.limits.max_message {
            return Err(FrameError::TooLarge(self.limits.max_message));
        }
        if self.buffer.len() < total {
            return Ok(None);
        }
        let frame: Bytes = self.buffer.split_to(total).freeze();
        Ok(Some(Frame::Message(Box::new(Message::parse(
            &frame, head_len,
        )?))))
    }

    /// The head's length and the body's (Content-Length), once the head is in.
    fn head(&self) -> Result<Option<(usize, usize)>, FrameError> {
        let mut lines = PullParser::new(&self.buffer, 0);
        let mut length = None;
        let mut count = 0;
        for line in lines.by_ref() {
            let Ok(line) = line else {
                // Incomplete: wait, unless a head this long can never end in time.
                if self.buffer.len() >= self.limits.max_message {
                    return Err(FrameError::TooLarge(self.limits.max_message));
                }
                return Ok(None);
            };
            count += 1;
            if count > self.limits.max_headers + 1 {
                return Err(FrameError::TooManyHeaders(self.limits.max_headers));
            }
            if let Some(value) = content_length(line) {
                length = Some(value.ok_or(FrameError::ContentLength)?);
            }
        }
        let head_len = lines.head_end();
        match length {
            Some(body) => Ok(Some((head_len, body))),
            None => Err(FrameError::ContentLength),
        }
    }
}

/// For the fuzz targets and the corpus replay: `data` as a peer's stream,
/// read in chunks whose size its first byte sets, every frame drained, and
/// each message printed and read again as the edge would answer it.
pub fn fuzz_stream(data: &[u8]) {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(*first).max(1);
    let mut framer = Framer::new(Limits::default());
    for piece in rest.chunks(chunk) {
        if framer.push(piece).is_err() {
            return;
        }
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::Message(m))) => {
                    let printed = Bytes::from(m.to_bytes());
                    let mut again = Framer::new(Limits::default());
                    if again.push(&printed).is_ok() {
                        let _ = again.next_frame();
                    }
                    let _ = m.response(500, "Server Internal Error", "t").to_bytes();
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// `Some(value)` when `line` is a Content-Length header (long or compact
/// form); the value `None` when it is not a number.
fn content_length(line: &[u8]) -> Option<Option<usize>> {
    let colon = line.iter().position(|b| *b == b':')?;
    let name = std::str::from_utf8(&line[..colon]).ok()?.trim();
    if !(name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l")) {
        return None;
    }
    Some(
        std::str::from_utf8(&line[colon + 1..])
            .ok()
            .and_then(|v| v.trim().parse().ok()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:gw.example SIP/2.0\r\n\
        Via: SIP/2.0/TLS edge.contoso.example:5061;branch=z9hG4bK776asdhds\r\n\
        Max-Forwards: 70\r\n\
        To: <sip:gw.example>\r\n\
        From: <sip:edge.contoso.example>;tag=1928301774\r\n\
        i: a84b4c76e66710\r\n\
        CSeq: 63104 OPTIONS\r\n\
        l: 0\r\n\r\n";

    #[test]
    fn messages_and_keep_alives_come_out_whole_however_the_bytes_arrive() {
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend_from_slice(OPTIONS);
        // A lone CRLF is a pong once what follows shows it is not a ping.
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(OPTIONS);
        let mut framer = Framer::new(Limits::default());
        let mut frames = Vec::new();
        for byte in &stream {
            framer.push(&[*byte]).unwrap();
            while let Some(frame) = framer.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert!(matches!(frames[0], Frame::Ping), "{frames:?}");
        let Frame::Message(m) = &frames[1] else {
            panic!("{frames:?}")
        };
        assert_eq!(
            m.method().map(ToString::to_string).as_deref(),
            Some("OPTIONS")
        );
        assert_eq!(
            m.header(&ezk_sip_types::Name::CALL_ID),
            Some("a84b4c76e66710")
        );
        assert!(matches!(frames[2], Frame::Pong), "{frames:?}");
        assert!(matches!(frames[3], Frame::Message(_)), "{frames:?}");
        assert_eq!(frames.len(), 4);
    }

    #[test]
    fn a_body_waits_for_its_length_and_then_is_the_message_s() {
        let mut framer = Framer::new(Limits::default());
        let head = b"MESSAGE sip:alice@teams.example SIP/2.0\r\nContent-Length: 5\r\n\r\nhel";
        framer.push(head).unwrap();
        assert!(framer.next_frame().unwrap().is_none());
        framer.push(b"lo").unwrap();
        let Some(Frame::Message(m)) = framer.next_frame().unwrap() else {
            panic!("no message")
        };
        assert_eq!(&m.body[..], b"hello");
    }

    #[test]
    fn hostile_streams_are_refused_not_held() {
        let limits = Limits {
            max_message: 1024,
            max_headers: 5,
        };
        // No Content-Length over TLS.
        let mut framer = Framer::new(limits);
        framer
            .push(b"OPTIONS sip:a SIP/2.0\r\nTo: <sip:a>\r\n\r\n")
            .unwrap();
        assert_eq!(framer.next_frame().unwrap_err(), FrameError::ContentLength);
        // A head that never ends.
        let mut framer = Framer::new(limits);
        framer.push(&[b'a'; 1024]).unwrap();
        assert_eq!(framer.next_frame().unwrap_err(), FrameError::TooLarge(1024));
        assert_eq!(
            framer.push(&[b'a'; 5]).unwrap_err(),
            FrameError::TooLarge(1024)
        );
        // Too many header lines.
        let mut framer = Framer::new(limits);
        framer
            .push(b"OPTIONS sip:a SIP/2.0\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\nF: 1\r\nl: 0\r\n\r\n")
            .unwrap();
        assert_eq!(
            framer.next_frame().unwrap_err(),
            FrameError::TooManyHeaders(5)
        );
        // A body announced past the limit.
        let mut framer = Framer::new(limits);
        framer
            .push(b"MESSAGE sip:a SIP/2.0\r\nl: 999999\r\n\r\n")
            .unwrap();
        assert_eq!(framer.next_frame().unwrap_err(), FrameError::TooLarge(1024));
        // Not SIP.
        let mut framer = Framer::new(limits);
        framer.push(b"GET / HTTP/1.1\r\nl: 0\r\n\r\n").unwrap();
        assert!(matches!(
            framer.next_frame().unwrap_err(),
            FrameError::Parse(_)
        ));
    }
}
