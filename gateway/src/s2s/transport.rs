//! The byte transport under an s2s XML stream: TCP, optionally TLS, with a
//! per-stanza read budget and the dialback namespace declared on our stream
//! headers.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, BufStream, ReadBuf};
use tokio::net::TcpStream;

/// What an s2s XML stream runs on.
pub type Io = BufStream<Transport>;

/// Counts the bytes read since the last complete element, so that a peer
/// cannot make us buffer an unbounded stanza, and the time since the first
/// of them, so that it cannot hold a stanza open by dripping bytes. The
/// count includes whatever the read buffer pulled ahead, so the size limit
/// holds to within one buffer (8 KiB).
#[derive(Debug, Clone)]
pub struct ReadBudget(Arc<BudgetState>);

#[derive(Debug)]
struct BudgetState {
    used: AtomicUsize,
    limit: AtomicUsize,
    /// How long one element may take once its first byte has arrived.
    time_limit: Duration,
    base: Instant,
    /// Milliseconds after `base` (plus one) when the pending element's first
    /// byte arrived; 0 while nothing is pending or the clock is not armed.
    started: AtomicU64,
    /// The clock runs once the stream is past its header (see `reset`).
    armed: AtomicBool,
}

impl ReadBudget {
    pub fn new(limit: usize, time_limit: Duration) -> Self {
        Self(Arc::new(BudgetState {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            time_limit,
            base: Instant::now(),
            started: AtomicU64::new(0),
            armed: AtomicBool::new(false),
        }))
    }

    /// Called after each complete element (and once the stream is open): the
    /// next element gets a fresh budget, and its clock starts with its first byte.
    pub fn reset(&self) {
        self.0.used.store(0, Ordering::Relaxed);
        self.0.started.store(0, Ordering::Relaxed);
        self.0.armed.store(true, Ordering::Relaxed);
    }

    /// Changes the size limit (smaller before the peer has authenticated).
    pub fn set_limit(&self, limit: usize) {
        self.0.limit.store(limit, Ordering::Relaxed);
    }

    fn charge(&self, bytes: &[u8]) -> io::Result<()> {
        let s = &self.0;
        let limit = s.limit.load(Ordering::Relaxed);
        let used = s.used.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len();
        if used > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                StanzaTooLarge(limit),
            ));
        }
        if !s.armed.load(Ordering::Relaxed) {
            return Ok(());
        }
        if s.started.load(Ordering::Relaxed) == 0 {
            // Whitespace between stanzas (keepalives) starts no clock.
            if bytes.iter().any(|b| !b" \t\r\n".contains(b)) {
                s.started
                    .store(self.now_ms().saturating_add(1), Ordering::Relaxed);
            }
            return Ok(());
        }
        match self.overdue() {
            Some(slow) => Err(io::Error::new(io::ErrorKind::InvalidData, slow)),
            None => Ok(()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the element being read has taken longer than its time limit
    /// (checked on every read, and by the stream when the peer falls silent).
    pub fn overdue(&self) -> Option<StanzaTooSlow> {
        let s = &self.0;
        let started = s.started.load(Ordering::Relaxed);
        let limit = u64::try_from(s.time_limit.as_millis()).unwrap_or(u64::MAX);
        (started != 0 && self.now_ms().saturating_sub(started - 1) > limit)
            .then_some(StanzaTooSlow(s.time_limit))
    }
}

/// The read error that means the peer exceeded the stanza size limit.
#[derive(Debug, thiserror::Error)]
#[error("stanza larger than {0} bytes")]
pub struct StanzaTooLarge(pub usize);

/// The read error that means a stanza took longer than its time limit.
#[derive(Debug, thiserror::Error)]
#[error("stanza not complete within {0:?} of its first byte")]
pub struct StanzaTooSlow(pub Duration);

enum Inner {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// In memory, for the fuzz targets: the same budget and limits as TCP.
    Memory(tokio::io::DuplexStream),
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

    /// A transport over an in-memory pipe (fuzzing), as `plain` over TCP.
    pub fn memory(io: tokio::io::DuplexStream, budget: ReadBudget) -> Self {
        Self::new(Inner::Memory(io), budget)
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
            Inner::Tls(_) | Inner::Memory(_) => None,
        }
    }

    pub fn injector(&self) -> Injector {
        self.injector.clone()
    }

    /// Called after each complete element: the next stanza gets a fresh budget.
    pub fn reset_budget(&self) {
        self.budget.reset();
    }

    pub fn budget(&self) -> &ReadBudget {
        &self.budget
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
        Inner::Memory(s) => Pin::new(s).poll_write(cx, buf),
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // An element broke a limit of the connection: read nothing more.
        if let Some(broken) = super::limits::take_broken() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, broken)));
        }
        let before = buf.filled().len();
        ready!(match &mut this.inner {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Inner::Memory(s) => Pin::new(s).poll_read(cx, buf),
        })?;
        this.budget.charge(&buf.filled()[before..])?;
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
            Inner::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_pending(cx))?;
        match &mut this.inner {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Inner::Memory(s) => Pin::new(s).poll_shutdown(cx),
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
        let b = ReadBudget::new(10, Duration::from_secs(60));
        assert!(b.charge(&[b'x'; 10]).is_ok());
        assert!(b.charge(b"x").is_err());
        b.reset();
        assert!(b.charge(&[b'x'; 5]).is_ok());
        b.set_limit(6);
        assert!(b.charge(b"xx").is_err());
    }

    #[test]
    fn a_stanza_dripped_past_its_time_limit_trips_and_whitespace_starts_no_clock() {
        let b = ReadBudget::new(1 << 20, Duration::from_millis(50));
        // Not armed before the stream is open: the header is timed elsewhere.
        assert!(b.charge(b"<stream:stream>").is_ok());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.charge(b"x").is_ok());
        b.reset();
        assert!(b.charge(b"  \n").is_ok());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.charge(b"<mess").is_ok(), "the clock starts here");
        assert!(b.charge(b"age").is_ok());
        std::thread::sleep(Duration::from_millis(60));
        let e = b.charge(b">").unwrap_err();
        assert!(
            e.get_ref()
                .unwrap()
                .downcast_ref::<StanzaTooSlow>()
                .is_some()
        );
        b.reset();
        assert!(b.charge(b"<message/>").is_ok());
    }
}
