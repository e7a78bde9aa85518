//! The byte transport under an s2s XML stream: TCP, optionally TLS, with a
//! per-stanza read budget and the dialback namespace declared on our stream
//! headers.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, BufStream, ReadBuf};
use tokio::net::TcpStream;

/// What an s2s XML stream runs on.
pub type Io = BufStream<Transport>;

/// Counts the bytes read since the last complete element, so that a peer
/// cannot make us buffer an unbounded stanza. The count includes whatever the
/// read buffer pulled ahead, so the limit holds to within one buffer (8 KiB).
#[derive(Debug, Clone)]
pub struct ReadBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl ReadBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Called after each complete element.
    pub fn reset(&self) {
        self.used.store(0, Ordering::Relaxed);
    }

    fn charge(&self, n: usize) -> io::Result<()> {
        let used = self.used.fetch_add(n, Ordering::Relaxed) + n;
        if used > self.limit {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                StanzaTooLarge(self.limit),
            ))
        } else {
            Ok(())
        }
    }
}

/// The read error that means the peer exceeded the stanza size limit.
#[derive(Debug, thiserror::Error)]
#[error("stanza larger than {0} bytes")]
pub struct StanzaTooLarge(pub usize);

enum Inner {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

/// Bytes to write verbatim, ahead of whatever the XML stream writes next.
///
/// ejabberd parses dialback elements by their literal qualified name
/// (`db:result`, not `{jabber:server:dialback}result`), and the XML writer
/// under tokio-xmpp picks its own prefixes; dialback elements are therefore
/// serialised by us and written through here (see `wire::send_dialback`).
#[derive(Debug, Clone, Default)]
pub struct Injector(Arc<std::sync::Mutex<Vec<u8>>>);

impl Injector {
    pub fn push(&self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// TCP or TLS, with the read budget and the header rewrite.
pub struct Transport {
    inner: Inner,
    budget: ReadBudget,
    injector: Injector,
    /// Declare `xmlns:db` on the next stream header we write.
    declare_dialback: std::sync::atomic::AtomicBool,
    /// Bytes accepted from the writer but not yet written (after a header rewrite).
    pending: Vec<u8>,
}

impl Transport {
    pub fn plain(tcp: TcpStream, budget: ReadBudget) -> Self {
        Self::new(Inner::Plain(tcp), budget)
    }

    pub fn tls(tls: tokio_rustls::TlsStream<TcpStream>, budget: ReadBudget) -> Self {
        Self::new(Inner::Tls(Box::new(tls)), budget)
    }

    fn new(inner: Inner, budget: ReadBudget) -> Self {
        Self {
            inner,
            budget,
            injector: Injector::default(),
            declare_dialback: std::sync::atomic::AtomicBool::new(true),
            pending: Vec::new(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }

    /// The plain TCP stream, to start TLS on (None when TLS already runs).
    pub fn into_tcp(self) -> Option<TcpStream> {
        match self.inner {
            Inner::Plain(tcp) => Some(tcp),
            Inner::Tls(_) => None,
        }
    }

    pub fn injector(&self) -> Injector {
        self.injector.clone()
    }

    /// Called after each complete element: the next stanza gets a fresh budget.
    pub fn reset_budget(&self) {
        self.budget.reset();
    }

    /// A stream restart writes a new header: declare the namespace on it too.
    pub fn expect_header(&self) {
        self.declare_dialback.store(true, Ordering::Relaxed);
    }

    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let injected = self.injector.take();
        if !injected.is_empty() {
            self.pending.extend_from_slice(&injected);
        }
        while !self.pending.is_empty() {
            let n = ready!(poll_write_inner(&mut self.inner, cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

/// tokio-xmpp writes `<stream:stream xmlns='jabber:server' …>` without the
/// dialback namespace. XEP-0220 peers look for it on the header (ejabberd
/// will not offer or accept dialback without it), so it is added here.
fn declare_dialback(buf: &[u8]) -> Option<Vec<u8>> {
    const HEAD: &[u8] = b"<stream:stream";
    let at = buf.windows(HEAD.len()).position(|w| w == HEAD)? + HEAD.len();
    let mut out = Vec::with_capacity(buf.len() + 40);
    out.extend_from_slice(&buf[..at]);
    out.extend_from_slice(b" xmlns:db='jabber:server:dialback'");
    out.extend_from_slice(&buf[at..]);
    Some(out)
}

fn poll_write_inner(
    inner: &mut Inner,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    match inner {
        Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
        Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(match &mut this.inner {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        })?;
        this.budget.charge(buf.filled().len() - before)?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_write_pending(cx))?;
        if this.declare_dialback.load(Ordering::Relaxed)
            && let Some(rewritten) = declare_dialback(buf)
        {
            this.declare_dialback.store(false, Ordering::Relaxed);
            this.pending = rewritten;
            // The caller's bytes are all taken; they go out through `pending`.
            let _ = this.poll_write_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        poll_write_inner(&mut this.inner, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_pending(cx))?;
        match &mut this.inner {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_pending(cx))?;
        match &mut this.inner {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialback_namespace_is_declared_on_the_header_only() {
        let header = b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' version='1.0'>";
        let out = declare_dialback(header).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "<?xml version='1.0'?><stream:stream xmlns:db='jabber:server:dialback' xmlns='jabber:server' version='1.0'>"
        );
        assert!(declare_dialback(b"<message/>").is_none());
    }

    #[test]
    fn budget_trips_past_its_limit_and_resets() {
        let b = ReadBudget::new(10);
        assert!(b.charge(10).is_ok());
        assert!(b.charge(1).is_err());
        b.reset();
        assert!(b.charge(5).is_ok());
    }
}
