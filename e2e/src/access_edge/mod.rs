//! A fake Skype for Business Server Access Edge (issue 17): what the
//! gateway's SIP federation route meets on Microsoft's side, written apart
//! from the gateway's own SIP code and enforcing what Microsoft documents:
//!
//! - SIP over mutual TLS (5061, "Edge Server environmental requirements in
//!   Skype for Business Server"): a client certificate from a trusted CA is
//!   required, and the partner's must carry the FQDN its allowed-domain
//!   entry names (`New-CsAllowedDomain -ProxyFqdn`), never by a wildcard
//!   (Lync Server 2013 "Wildcard certificate support": no wildcard for the
//!   Edge's external interface). A certificate that does not prove it has
//!   its connection closed: Microsoft documents no answer for it.
//! - The federation policy of `policy.rs`: allowed and blocked domains,
//!   refusals with 403 and `ms-diagnostics-public` only when the edge tells
//!   external networks, unknown users 404 with [MS-OCER] 1003.
//! - IM as Microsoft's clients federate it ([MS-SDP] §3.1.5.3 `m=message`;
//!   the `ms-text-format` first message and the `KeyboardActivity` INFO
//!   are not in Microsoft's open specifications: their shapes follow
//!   public client implementations, pidgin-sipe): an INVITE's first
//!   message taken and said so (`Supported: ms-text-format`), in-dialog
//!   MESSAGE and INFO, 481 outside a dialog, BYE, retransmissions absorbed
//!   (RFC 3261 §17.2).
//! - RFC 5626 keep-alives: a double CRLF is answered with a CRLF.

pub mod policy;
pub mod sip;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

use self::policy::{Policy, USER_DOES_NOT_EXIST, Verdict};
use self::sip::{Item, Sip, aor, domain_of, tag};

mod tls;

/// What the edge's users got, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Message {
        from: String,
        to: String,
        text: String,
    },
    Typing {
        from: String,
        to: String,
        active: bool,
    },
    Ended {
        from: String,
        to: String,
    },
}

/// One IM session the edge is in.
#[derive(Debug, Clone)]
struct Dialog {
    local: String,
    local_tag: String,
    remote: String,
    remote_tag: String,
    /// Where in-dialog requests go.
    target: String,
    cseq: u32,
}

type Writer = Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>>;

struct Outbound {
    writer: Writer,
    waiting: Mutex<HashMap<(String, String), oneshot::Sender<Sip>>>,
}

struct Inner {
    fqdn: String,
    policy: Mutex<Policy>,
    tls: tls::Tls,
    /// Where each partner domain's edge is (the test's DNS).
    partners: Mutex<HashMap<String, SocketAddr>>,
    dialogs: Mutex<HashMap<String, Dialog>>,
    /// Transactions already answered: a resend is answered, not taken again.
    seen: Mutex<HashSet<(String, String)>>,
    received: Mutex<Vec<Received>>,
    arrived: Notify,
    outbound: Mutex<HashMap<SocketAddr, Arc<Outbound>>>,
    pongs: AtomicUsize,
}

pub struct AccessEdge {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AccessEdge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AccessEdge {
    /// An edge named `fqdn` at `at` (port 0: any), with its certificate and
    /// key and the roots partners' certificates must chain to.
    pub async fn start(
        at: SocketAddr,
        fqdn: &str,
        (cert, key, ca): (&Path, &Path, &Path),
        policy: Policy,
    ) -> anyhow::Result<Self> {
        let tls = tls::Tls::load(cert, key, ca)?;
        let listener = TcpListener::bind(at).await.context("binding the edge")?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            fqdn: fqdn.to_owned(),
            policy: Mutex::new(policy),
            tls,
            partners: Mutex::new(HashMap::new()),
            dialogs: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashSet::new()),
            received: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            outbound: Mutex::new(HashMap::new()),
            pongs: AtomicUsize::new(0),
        });
        let serving = inner.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let inner = serving.clone();
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), inner.tls.accept(tcp)).await
                    else {
                        return; // no trusted client certificate: no session
                    };
                    let chain = tls::chain(tls.get_ref().1.peer_certificates());
                    let (reader, writer) = tokio::io::split(tls);
                    let writer: Writer = Arc::new(tokio::sync::Mutex::new(Box::new(writer)));
                    inner.read(reader, writer, chain, None).await;
                });
            }
        });
        Ok(Self { inner, addr, task })
    }

    /// Where `domain`'s edge is (the gateway's SIP address, after a restart).
    pub fn route(&self, domain: &str, addr: SocketAddr) {
        lock(&self.inner.partners).insert(domain.to_ascii_lowercase(), addr);
        // A new address: a new connection.
        lock(&self.inner.outbound).clear();
    }

    pub fn policy(&self, change: impl FnOnce(&mut Policy)) {
        change(&mut lock(&self.inner.policy));
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.inner.received).clone()
    }

    /// Waits until `pred` holds of what was received.
    pub async fn wait_for(
        &self,
        within: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> anyhow::Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.inner.arrived.notified();
            let now = self.received();
            if pred(&now) {
                return Ok(now);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("not received within {within:?}; got {now:?}");
            }
        }
    }

    /// `from` (one of ours) sends `text` to `to` at a partner: in their
    /// session if one is up, else an INVITE carrying it. The final status.
    pub async fn send_im(&self, from: &str, to: &str, text: &str) -> anyhow::Result<u16> {
        let inner = &self.inner;
        if let Some((call_id, dialog)) = inner.dialog_between(from, to) {
            let status = inner.message_in(&call_id, &dialog, to, text).await?;
            if status != 481 {
                return Ok(status);
            }
            lock(&inner.dialogs).remove(&call_id); // stale: a new session
        }
        inner.invite(from, to, text).await
    }

    /// `from` types (or stops) to `to`, inside their session.
    pub async fn send_typing(&self, from: &str, to: &str, active: bool) -> anyhow::Result<u16> {
        let inner = &self.inner;
        let (call_id, dialog) = inner
            .dialog_between(from, to)
            .context("typing is sent only inside a session")?;
        let cseq = inner.next_cseq(&call_id);
        let status = if active { "type" } else { "idle" };
        let info = inner
            .in_dialog(&call_id, &dialog, "INFO", cseq)
            .with("Content-Type", "application/xml");
        let info = Sip {
            body: format!("<?xml version=\"1.0\"?><KeyboardActivity><status status=\"{status}\" /></KeyboardActivity>").into_bytes(),
            ..info
        };
        Ok(inner.request(to, info).await?.status().unwrap_or(0))
    }

    /// `from` leaves the session with `to` (BYE).
    pub async fn bye(&self, from: &str, to: &str) -> anyhow::Result<u16> {
        let inner = &self.inner;
        let (call_id, dialog) = inner.dialog_between(from, to).context("no session")?;
        let cseq = inner.next_cseq(&call_id);
        let bye = inner.in_dialog(&call_id, &dialog, "BYE", cseq);
        lock(&inner.dialogs).remove(&call_id);
        Ok(inner.request(to, bye).await?.status().unwrap_or(0))
    }

    /// Sends a double-CRLF keep-alive to `domain`'s edge; whether a CRLF
    /// came back within 5 s.
    pub async fn ping(&self, domain: &str) -> anyhow::Result<bool> {
        let before = self.inner.pongs.load(Ordering::SeqCst);
        let outbound = self.inner.connect(domain).await?;
        outbound.writer.lock().await.write_all(b"\r\n\r\n").await?;
        for _ in 0..50 {
            if self.inner.pongs.load(Ordering::SeqCst) > before {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(false)
    }
}

impl Inner {
    fn dialog_between(&self, local: &str, remote: &str) -> Option<(String, Dialog)> {
        lock(&self.dialogs)
            .iter()
            .find(|(_, d)| {
                d.local.eq_ignore_ascii_case(local) && d.remote.eq_ignore_ascii_case(remote)
            })
            .map(|(c, d)| (c.clone(), d.clone()))
    }

    fn next_cseq(&self, call_id: &str) -> u32 {
        let mut dialogs = lock(&self.dialogs);
        dialogs.get_mut(call_id).map_or(1, |d| {
            d.cseq += 1;
            d.cseq
        })
    }

    fn head(
        &self,
        method: &str,
        uri: &str,
        call_id: &str,
        cseq: u32,
        from: String,
        to: String,
    ) -> Sip {
        Sip::request(
            format!("{method} {uri} SIP/2.0"),
            vec![
                (
                    "Via".into(),
                    format!("SIP/2.0/TLS {};branch=z9hG4bK{}", self.fqdn, token()),
                ),
                ("Max-Forwards".into(), "70".into()),
                ("From".into(), from),
                ("To".into(), to),
                ("Call-ID".into(), call_id.to_owned()),
                ("CSeq".into(), format!("{cseq} {method}")),
                (
                    "Contact".into(),
                    format!("<sip:{};transport=tls>", self.fqdn),
                ),
            ],
            Vec::new(),
        )
    }

    fn in_dialog(&self, call_id: &str, d: &Dialog, method: &str, cseq: u32) -> Sip {
        let to_tag = if d.remote_tag.is_empty() {
            String::new()
        } else {
            format!(";tag={}", d.remote_tag)
        };
        self.head(
            method,
            &d.target,
            call_id,
            cseq,
            format!("<{}>;tag={}", d.local, d.local_tag),
            format!("<{}>{to_tag}", d.remote),
        )
    }

    /// A new session whose INVITE carries the first message.
    async fn invite(self: &Arc<Self>, from: &str, to: &str, text: &str) -> anyhow::Result<u16> {
        let (call_id, local_tag) = (format!("{}@{}", token(), self.fqdn), token());
        let b64 = base64::engine::general_purpose::STANDARD.encode(text);
        let invite = self
            .head(
                "INVITE",
                to,
                &call_id,
                1,
                format!("<{from}>;tag={local_tag}"),
                format!("<{to}>"),
            )
            .with(
                "ms-text-format",
                format!("text/plain; charset=UTF-8; ms-body={b64}"),
            )
            .with("Ms-Conversation-ID", token())
            .with("Supported", "ms-text-format")
            .with("Content-Type", "application/sdp");
        let invite = Sip {
            body: sdp("m=message 5061 sip null").into_bytes(),
            ..invite
        };
        let ok = self.request(to, invite).await?;
        let status = ok.status().unwrap_or(0);
        if !(200..300).contains(&status) {
            return Ok(status);
        }
        let dialog = Dialog {
            local: from.to_ascii_lowercase(),
            local_tag,
            remote: to.to_ascii_lowercase(),
            remote_tag: ok.header("To").and_then(tag).unwrap_or_default(),
            target: ok
                .header("Contact")
                .and_then(aor)
                .unwrap_or_else(|| to.to_owned()),
            cseq: 1,
        };
        lock(&self.dialogs).insert(call_id.clone(), dialog.clone());
        let ack = self.in_dialog(&call_id, &dialog, "ACK", 1);
        self.connect(&domain_of(to).unwrap_or_default())
            .await?
            .writer
            .lock()
            .await
            .write_all(&ack.to_bytes())
            .await?;
        let took_it = ok
            .header("Supported")
            .is_some_and(|s| s.contains("ms-text-format"));
        if took_it {
            return Ok(status);
        }
        self.message_in(&call_id, &dialog, to, text).await
    }

    /// `text` as an in-dialog MESSAGE; the final status.
    async fn message_in(
        self: &Arc<Self>,
        call_id: &str,
        dialog: &Dialog,
        to: &str,
        text: &str,
    ) -> anyhow::Result<u16> {
        let cseq = self.next_cseq(call_id);
        let message = self
            .in_dialog(call_id, dialog, "MESSAGE", cseq)
            .with("Content-Type", "text/plain; charset=UTF-8");
        let message = Sip {
            body: text.as_bytes().to_vec(),
            ..message
        };
        Ok(self.request(to, message).await?.status().unwrap_or(0))
    }

    /// Sends a request to the edge of `to`'s domain and waits for its
    /// final response.
    async fn request(self: &Arc<Self>, to: &str, request: Sip) -> anyhow::Result<Sip> {
        let domain = domain_of(to).context("no domain")?;
        if let Verdict::Refuse(..) = lock(&self.policy).admits(&domain) {
            bail!("{domain} is not a federated partner of this edge");
        }
        let outbound = self.connect(&domain).await?;
        let key = request.transaction().context("no transaction")?;
        let (tx, rx) = oneshot::channel();
        lock(&outbound.waiting).insert(key, tx);
        outbound
            .writer
            .lock()
            .await
            .write_all(&request.to_bytes())
            .await?;
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .context("no final response in 10 s")?
            .context("the connection closed")
    }

    /// The connection to `domain`'s edge, made if none is open: its
    /// certificate must prove the partner's FQDN (server usage).
    async fn connect(self: &Arc<Self>, domain: &str) -> anyhow::Result<Arc<Outbound>> {
        let addr = *lock(&self.partners)
            .get(domain)
            .with_context(|| format!("no route to {domain}"))?;
        if let Some(open) = lock(&self.outbound).get(&addr) {
            return Ok(open.clone());
        }
        let fqdn = lock(&self.policy).partner_fqdn(domain);
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(fqdn.clone())?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS to {fqdn}"))?;
        let chain = tls::chain(tls.get_ref().1.peer_certificates());
        tls::names_exactly(&chain, &fqdn)?;
        let (reader, writer) = tokio::io::split(tls);
        let outbound = Arc::new(Outbound {
            writer: Arc::new(tokio::sync::Mutex::new(Box::new(writer))),
            waiting: Mutex::new(HashMap::new()),
        });
        lock(&self.outbound).insert(addr, outbound.clone());
        let (me, reading) = (self.clone(), outbound.clone());
        tokio::spawn(async move {
            let writer = reading.writer.clone();
            me.read(reader, writer, chain, Some(reading.clone())).await;
            let mut open = lock(&me.outbound);
            if open.get(&addr).is_some_and(|o| Arc::ptr_eq(o, &reading)) {
                open.remove(&addr);
            }
        });
        Ok(outbound)
    }
}

impl Inner {
    /// Reads a connection until it closes: keep-alives answered, responses
    /// handed to their transaction (on our outbound connections), requests
    /// judged and answered.
    async fn read<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        writer: Writer,
        chain: Vec<CertificateDer<'static>>,
        outbound: Option<Arc<Outbound>>,
    ) {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let item = match sip::next(&mut buffer) {
                Ok(Some(item)) => item,
                Ok(None) => match reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        buffer.extend_from_slice(&chunk[..n]);
                        continue;
                    }
                },
                Err(_) => return, // malformed framing: the connection is dropped
            };
            let reply = match item {
                Item::Ping => Some(b"\r\n".to_vec()),
                Item::Pong => {
                    self.pongs.fetch_add(1, Ordering::SeqCst);
                    None
                }
                Item::Message(m) if m.status().is_some() => {
                    let final_response = m.status().is_some_and(|s| s >= 200);
                    let waiting = match (final_response, &outbound, m.transaction()) {
                        (true, Some(out), Some(key)) => lock(&out.waiting).remove(&key),
                        _ => None,
                    };
                    if let Some(tx) = waiting {
                        let _ = tx.send(m);
                    }
                    None
                }
                Item::Message(request) => match self.answer(&request, &chain) {
                    Ok(response) => response.map(|r| r.to_bytes()),
                    Err(()) => return, // the certificate does not prove the partner
                },
            };
            if let Some(bytes) = reply
                && writer.lock().await.write_all(&bytes).await.is_err()
            {
                return;
            }
        }
    }

    /// The edge's answer to a federated request (`None` for ACK), or
    /// `Err` when the connection must be closed.
    fn answer(&self, request: &Sip, chain: &[CertificateDer<'static>]) -> Result<Option<Sip>, ()> {
        let local_tag = token();
        let (Some(from), Some(to)) = (
            request.header("From").and_then(aor),
            request.header("To").and_then(aor),
        ) else {
            return Ok(Some(request.response(400, "Bad Request", &local_tag)));
        };
        let domain = domain_of(&from).unwrap_or_default();
        let policy = lock(&self.policy).clone();
        let verdict = policy.admits(&domain);
        if verdict != Verdict::Accept {
            return Ok(policy.refusal(request, &verdict, &local_tag));
        }
        if tls::names_exactly(chain, &policy.partner_fqdn(&domain)).is_err() {
            return Err(());
        }
        let method = request.method().unwrap_or_default().to_owned();
        if method == "ACK" {
            return Ok(None);
        }
        let call_id = request.header("Call-ID").unwrap_or_default().to_owned();
        let known = lock(&self.dialogs).contains_key(&call_id);
        let key = request.transaction().unwrap_or_default();
        let resent = !lock(&self.seen).insert(key);
        let ok = request.response(200, "OK", &local_tag);
        let response = match method.as_str() {
            "OPTIONS" => ok.with("Allow", "INVITE, ACK, CANCEL, BYE, MESSAGE, INFO, OPTIONS"),
            "INVITE" if !policy.has_user(&to) => policy
                .refusal(
                    request,
                    &Verdict::Refuse(404, "Not Found", USER_DOES_NOT_EXIST),
                    &local_tag,
                )
                .unwrap_or(ok),
            "INVITE" => {
                return Ok(Some(
                    self.accept_invite(request, from, to, local_tag, resent),
                ));
            }
            "CANCEL" => ok,
            _ if !known => request.response(481, "Call Leg/Transaction Does Not Exist", &local_tag),
            "MESSAGE"
                if request
                    .header("Content-Type")
                    .is_some_and(|c| c.starts_with("text/plain")) =>
            {
                if !resent {
                    self.took(Received::Message {
                        from,
                        to,
                        text: request.text(),
                    });
                }
                ok
            }
            "MESSAGE" => request.response(415, "Unsupported Media Type", &local_tag),
            "INFO" => {
                let body = request.text();
                if body.contains("KeyboardActivity") && !resent {
                    let active = body.contains("status=\"type\"");
                    self.took(Received::Typing { from, to, active });
                }
                ok
            }
            "BYE" => {
                lock(&self.dialogs).remove(&call_id);
                if !resent {
                    self.took(Received::Ended { from, to });
                }
                ok
            }
            _ => request.response(405, "Method Not Allowed", &local_tag),
        };
        Ok(Some(response))
    }

    fn accept_invite(
        &self,
        invite: &Sip,
        from: String,
        to: String,
        local_tag: String,
        resent: bool,
    ) -> Sip {
        if !invite.text().lines().any(|l| l.starts_with("m=message ")) {
            return invite.response(488, "Not Acceptable Here", &local_tag);
        }
        let call_id = invite.header("Call-ID").unwrap_or_default().to_owned();
        let dialog = Dialog {
            local: to.clone(),
            local_tag: local_tag.clone(),
            remote: from.clone(),
            remote_tag: invite.header("From").and_then(tag).unwrap_or_default(),
            target: invite
                .header("Contact")
                .and_then(aor)
                .unwrap_or_else(|| from.clone()),
            cseq: 0,
        };
        lock(&self.dialogs).entry(call_id).or_insert(dialog);
        let first = invite
            .header("ms-text-format")
            .and_then(|f| f.split(';').find_map(|p| p.trim().strip_prefix("ms-body=")))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let mut ok = invite
            .response(200, "OK", &local_tag)
            .with("Contact", format!("<sip:{};transport=tls>", self.fqdn))
            .with("Content-Type", "application/sdp");
        if let Some(text) = first {
            if !resent {
                self.took(Received::Message {
                    from,
                    to: to.clone(),
                    text,
                });
            }
            ok = ok.with("Supported", "ms-text-format");
        }
        Sip {
            body: sdp(&format!("m=message 5061 sip {to}")).into_bytes(),
            ..ok
        }
    }

    fn took(&self, received: Received) {
        lock(&self.received).push(received);
        self.arrived.notify_waiters();
    }
}

/// An IM session's SDP ([MS-SDP] §3.1.5.3: `m=message`, port ignored
/// through servers).
fn sdp(media: &str) -> String {
    format!(
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=session\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n{media}\r\na=accept-types:text/plain\r\n"
    )
}

fn token() -> String {
    let mut bytes = [0u8; 12];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
