//! A scripted XMPP server peer speaking raw bytes: for hostile-peer tests and
//! s2s benchmarks, where a real server would refuse to misbehave or would be
//! the bottleneck.
//!
//! [`Authoritative`] plays the peer's authoritative server: it accepts the
//! gateway's outbound streams and says `valid` to every dialback check, so a
//! [`RawPeer`] can authenticate as any domain routed to it.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Answers every dialback request with one verdict; runs until dropped.
pub struct Authoritative {
    pub port: u16,
    task: JoinHandle<()>,
    received: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Authoritative {
    /// Says `valid` to every key.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with("valid").await
    }

    /// Says `verdict` (`valid`, `invalid`) to every key.
    pub async fn start_with(verdict: &'static str) -> anyhow::Result<Self> {
        Self::serve(verdict, None).await
    }

    /// Says `valid`, and offers XEP-0198 stream management: it answers each
    /// `<r/>` with the stanzas received on the stream, except that on its
    /// first stream it acknowledges at most `first_stream_acks` and drops
    /// the connection instead (a server that crashed with stanzas unhandled).
    pub async fn with_stream_management(first_stream_acks: u32) -> anyhow::Result<Self> {
        Self::serve("valid", Some((first_stream_acks, Stingy::Dies))).await
    }

    /// The same, but beyond `first_stream_acks` its first stream stays open
    /// and answers no `<r/>` at all (a server that hangs).
    pub async fn with_silent_stream_management(first_stream_acks: u32) -> anyhow::Result<Self> {
        Self::serve("valid", Some((first_stream_acks, Stingy::Hangs))).await
    }

    async fn serve(verdict: &'static str, sm: Option<(u32, Stingy)>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            let mut streams = 0u32;
            while let Ok((tcp, _)) = listener.accept().await {
                // The first stream is the stingy one.
                let sm = sm.map(|(limit, then)| {
                    if streams == 0 {
                        (limit, then)
                    } else {
                        (u32::MAX, then)
                    }
                });
                streams += 1;
                tokio::spawn(answer(tcp, verdict, sm, log.clone()));
            }
        });
        Ok(Self {
            port,
            task,
            received,
        })
    }

    /// Everything the gateway sent to this server so far (its outbound streams).
    pub fn received(&self) -> String {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What a stingy first stream does beyond its acknowledgements.
#[derive(Clone, Copy)]
enum Stingy {
    Dies,
    Hangs,
}

impl Drop for Authoritative {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn attr<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    for quote in ['\'', '"'] {
        let needle = format!(" {name}={quote}");
        if let Some(start) = element.find(&needle) {
            let rest = &element[start + needle.len()..];
            return rest.find(quote).map(|end| &rest[..end]);
        }
    }
    None
}

/// Serves one connection from the gateway: header, features, then `verdict`
/// for each `<db:verify/>` (and `valid` for the gateway's own `<db:result/>`).
async fn answer(
    mut tcp: TcpStream,
    verdict: &'static str,
    acks_at_most: Option<(u32, Stingy)>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
) {
    let mut stanzas = 0u32;
    let mut buf = String::new();
    let mut chunk = [0u8; 8192];
    let mut opened = false;
    loop {
        let Ok(n) = tcp.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        let text = String::from_utf8_lossy(&chunk[..n]);
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_str(&text);
        buf.push_str(&text);
        let mut replies = Vec::new();
        if !opened {
            match open_reply(&mut buf, acks_at_most.is_some()) {
                Some(reply) => {
                    replies.push(reply);
                    opened = true;
                }
                None => continue,
            }
        }
        replies.extend(dialback_replies(&mut buf, verdict));
        let mut gone = false;
        if let Some((limit, then)) = acks_at_most {
            gone = sm_replies(&mut buf, &mut stanzas, limit, then, &mut replies);
        }
        for reply in replies {
            if tcp.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
        if gone {
            return; // gone, unacknowledged
        }
        if buf.len() > 1 << 20 {
            buf.clear();
        }
    }
}

/// Our stream header and features once the gateway's header is complete
/// (taken from the buffer); `None` until it is.
fn open_reply(buf: &mut String, sm: bool) -> Option<String> {
    let start = buf.find("<stream:stream")?;
    let end = buf[start..].find('>')?;
    let header = buf[start..start + end].to_owned();
    let (from, to) = (
        attr(&header, "from").unwrap_or_default(),
        attr(&header, "to").unwrap_or_default(),
    );
    let sm_feature = if sm {
        "<sm xmlns='urn:xmpp:sm:3'/>"
    } else {
        ""
    };
    let reply = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' \
         xmlns:stream='http://etherx.jabber.org/streams' from='{to}' to='{from}' id='stub-{}' version='1.0'>\
         <stream:features><dialback xmlns='urn:xmpp:features:dialback'/>{sm_feature}</stream:features>",
        std::process::id()
    );
    buf.drain(..start + end + 1);
    Some(reply)
}

/// An answer to each complete dialback element in the buffer (taken from it).
fn dialback_replies(buf: &mut String, verdict: &str) -> Vec<String> {
    let mut replies = Vec::new();
    loop {
        let next = ["<db:result", "<result", "<db:verify", "<verify"]
            .iter()
            .filter_map(|p| buf.find(p).map(|i| (i, *p)))
            .min();
        let Some((start, _)) = next else { break };
        let rest = &buf[start..];
        let Some(end) = rest
            .find("</db:result>")
            .or_else(|| rest.find("</result>"))
            .or_else(|| rest.find("</db:verify>"))
            .or_else(|| rest.find("</verify>"))
            .or_else(|| rest.find("/>"))
        else {
            break;
        };
        let element = rest[..end].to_owned();
        let close = rest[end..].find('>').map_or(rest.len(), |i| end + i + 1);
        buf.drain(..start + close);
        let (from, to) = (
            attr(&element, "from").unwrap_or_default(),
            attr(&element, "to").unwrap_or_default(),
        );
        replies.push(if element.contains("verify") {
            let id = attr(&element, "id").unwrap_or_default();
            format!("<db:verify from='{to}' to='{from}' id='{id}' type='{verdict}'/>")
        } else {
            format!("<db:result from='{to}' to='{from}' type='valid'/>")
        });
    }
    replies
}

/// Stream management: counts stanzas, answers `<enable/>` and `<r/>` (up to
/// `limit` stanzas, then as `then` says). Returns true when the peer is to
/// vanish now, unacknowledged.
fn sm_replies(
    buf: &mut String,
    stanzas: &mut u32,
    limit: u32,
    then: Stingy,
    replies: &mut Vec<String>,
) -> bool {
    loop {
        let next = ["<message", "<presence", "<iq", "<enable", "<r ", "<r/"]
            .iter()
            .filter_map(|p| buf.find(p).map(|i| (i, *p)))
            .min();
        let Some((start, what)) = next else {
            return false;
        };
        buf.drain(..start + what.len());
        match what {
            "<enable" => replies.push("<enabled xmlns='urn:xmpp:sm:3'/>".to_owned()),
            "<r " | "<r/" if *stanzas > limit => match then {
                Stingy::Dies => return true,
                Stingy::Hangs => {}
            },
            "<r " | "<r/" => replies.push(format!("<a xmlns='urn:xmpp:sm:3' h='{stanzas}'/>")),
            _ => *stanzas += 1,
        }
    }
}

/// One raw s2s connection to the gateway.
pub struct RawPeer {
    pub tcp: TcpStream,
    pub received: String,
    pub stream_id: String,
}

impl RawPeer {
    pub async fn connect(port: u16) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        Ok(Self {
            tcp,
            received: String::new(),
            stream_id: String::new(),
        })
    }

    /// Connects and sends a stream header `from` → `to`, reading nothing.
    pub async fn start(port: u16, from: &str, to: &str) -> anyhow::Result<Self> {
        let mut peer = Self::connect(port).await?;
        peer.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' \
             xmlns:stream='http://etherx.jabber.org/streams' from='{from}' to='{to}' version='1.0'>"
        ))
        .await?;
        Ok(peer)
    }

    /// Opens a stream `from` → `to` and reads the gateway's header and features.
    pub async fn open(port: u16, from: &str, to: &str) -> anyhow::Result<Self> {
        let mut peer = Self::start(port, from, to).await?;
        let text = peer
            .read_until("</stream:features>", Duration::from_secs(10))
            .await?;
        let start = text.find("<stream:stream").context("no stream header")?;
        peer.stream_id = attr(&text[start..], "id").unwrap_or_default().to_owned();
        Ok(peer)
    }

    /// Opens a stream and authenticates `from` by dialback (the gateway must
    /// route `from` to an [`Authoritative`]).
    pub async fn authenticated(port: u16, from: &str, to: &str) -> anyhow::Result<Self> {
        let mut peer = Self::open(port, from, to).await?;
        peer.send(&format!(
            "<db:result from='{from}' to='{to}'>any-key</db:result>"
        ))
        .await?;
        // Only what arrives after our request counts as its answer.
        let before = peer.received.len();
        let verdicts = [
            "type='valid'",
            "type=\"valid\"",
            "type='invalid'",
            "type='error'",
            "</stream:stream>",
        ];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !verdicts.iter().any(|v| peer.received[before..].contains(v)) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            peer.read_more(left).await?;
        }
        let answer = &peer.received[before..];
        if !answer.contains("type='valid'") && !answer.contains("type=\"valid\"") {
            bail!("dialback not accepted: {}", peer.received);
        }
        Ok(peer)
    }

    pub async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.tcp.write_all(text.as_bytes()).await?;
        Ok(())
    }

    /// Reads until `pattern` has been received (all that arrived is kept in
    /// `received`), or fails after `timeout` or when the gateway closes.
    pub async fn read_until(&mut self, pattern: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut chunk = vec![0u8; 65536];
        while !self.received.contains(pattern) {
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk))
                .await
                .with_context(|| {
                    format!("timed out waiting for {pattern:?}; got: {}", self.received)
                })??;
            if n == 0 {
                bail!(
                    "connection closed before {pattern:?}; got: {}",
                    self.received
                );
            }
            self.received
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
        Ok(self.received.clone())
    }

    /// Reads one more chunk.
    pub async fn read_more(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let mut chunk = vec![0u8; 65536];
        let n = tokio::time::timeout(timeout, self.tcp.read(&mut chunk))
            .await
            .with_context(|| format!("timed out; got: {}", self.received))??;
        if n == 0 {
            bail!("connection closed; got: {}", self.received);
        }
        self.received
            .push_str(&String::from_utf8_lossy(&chunk[..n]));
        Ok(())
    }

    /// Reads until the gateway closes the connection; returns all received.
    pub async fn read_to_close(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let mut rest = Vec::new();
        // A reset after the close is still a close: keep what arrived before it.
        let _ = tokio::time::timeout(timeout, self.tcp.read_to_end(&mut rest))
            .await
            .with_context(|| {
                format!(
                    "the gateway did not close the stream; got: {}",
                    self.received
                )
            })?;
        self.received.push_str(&String::from_utf8_lossy(&rest));
        Ok(self.received.clone())
    }
}
