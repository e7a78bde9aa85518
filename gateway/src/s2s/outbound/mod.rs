//! Outbound streams: one per remote domain, opened on first use.
//!
//! The stream's task resolves and connects, upgrades with STARTTLS, asks for
//! XEP-0288 bidi when offered, and authenticates with dialback. Stanzas wait
//! in its queue until the peer accepts our key; `<db:verify/>` requests for
//! the inbound side go out as soon as the stream is open, independent of our
//! own dialback. A domain that cannot be reached gets a few attempts with
//! backoff, then each queued stanza is bounced with `remote-server-not-found`
//! or `remote-server-timeout`.

//!
//! `connect` opens and negotiates a stream; `session` runs it.

mod connect;
mod session;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use xmpp_parsers::stanza_error::DefinedCondition;

use self::connect::{ConnectError, negotiate};
use self::session::session;
use super::dialback::Verdict;
use super::stanza::Stanza;
use super::{Shared, limits};

/// How many times a domain is tried before queued stanzas bounce.
const ATTEMPTS: u32 = 3;

pub enum Command {
    /// A stanza, and who wants to know once it is written to the stream.
    Send(Box<Stanza>, Option<oneshot::Sender<()>>),
    Verify {
        id: String,
        key: String,
        reply: oneshot::Sender<Verdict>,
    },
}

/// Why a stanza was not queued.
pub enum Refused {
    /// The queue is full: the caller (the bridge's durable outbox) retries later.
    Full,
    /// The stream task has ended: the stanza comes back for a new one.
    Closed(Box<Stanza>, Option<oneshot::Sender<()>>),
}

/// A handle on one remote domain's outbound stream task.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Command>,
}

impl Outbound {
    pub fn spawn(shared: Arc<Shared>, domain: String) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let handle = Self { tx };
        let me = handle.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("s2s_out", peer = %domain);
            let limits = shared.settings.limits;
            let run = tracing::Instrument::instrument(run(shared, domain, rx, me), span);
            limits::scoped(limits, run).await;
        });
        handle
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub fn same(&self, other: &Outbound) -> bool {
        self.tx.same_channel(&other.tx)
    }

    /// Queues a stanza without waiting; gives it back when the queue is full
    /// or this stream's task has ended.
    pub fn try_send(
        &self,
        stanza: Stanza,
        written: Option<oneshot::Sender<()>>,
    ) -> Result<(), Refused> {
        use mpsc::error::TrySendError;
        self.tx
            .try_send(Command::Send(Box::new(stanza), written))
            .map_err(|e| match e {
                TrySendError::Full(Command::Send(..)) => Refused::Full,
                TrySendError::Closed(Command::Send(s, w)) => Refused::Closed(s, w),
                TrySendError::Full(Command::Verify { .. })
                | TrySendError::Closed(Command::Verify { .. }) => {
                    unreachable!("sent a Send")
                }
            })
    }

    /// Queues a stanza, waiting while the queue is full (the stream task is
    /// writing a batch); gives it back if this stream's task has ended.
    pub async fn send(&self, stanza: Stanza) -> Result<(), Box<Stanza>> {
        self.tx
            .send(Command::Send(Box::new(stanza), None))
            .await
            .map_err(|e| match e.0 {
                Command::Send(s, _) => s,
                Command::Verify { .. } => unreachable!("sent a Send"),
            })
    }

    /// Asks the remote domain (the authoritative server) whether `key` is
    /// its key for stream `id`.
    pub async fn verify(&self, id: String, key: String) -> Verdict {
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(Command::Verify { id, key, reply })
            .await
            .is_err()
        {
            return Verdict::Error;
        }
        answer.await.unwrap_or(Verdict::Error)
    }
}

/// Work waiting for a stream.
#[derive(Default)]
pub(super) struct Pending {
    stanzas: VecDeque<(Stanza, Option<oneshot::Sender<()>>)>,
    verifies: Vec<(String, String, oneshot::Sender<Verdict>)>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.stanzas.is_empty() && self.verifies.is_empty()
    }
}

/// How a stream ended.
pub(super) enum Ended {
    /// Closed after authentication with nothing left to send.
    Done,
    /// The peer refused our dialback key.
    Refused(Verdict),
    /// Dropped; whatever is queued needs a new stream.
    Lost(String),
}

/// Why a stream could not carry what was queued: the error stanzas get, and
/// whether it is final (a refused dialback key) rather than worth a retry.
type Failure = (DefinedCondition, String, bool);

async fn run(shared: Arc<Shared>, domain: String, mut rx: mpsc::Receiver<Command>, me: Outbound) {
    let mut pending = Pending::default();
    let mut failures = 0u32;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(cmd) => take(&shared, &mut pending, cmd).await,
                None => return,
            }
        }
        let Some((condition, text, fatal)) =
            attempt(&shared, &domain, &mut pending, &mut rx, &mut failures).await
        else {
            if pending.is_empty() {
                break;
            }
            continue;
        };
        if fatal || failures >= ATTEMPTS {
            // Give up on this domain for now: no stanza is left without an answer.
            shared.forget_outbound(&domain, &me);
            rx.close();
            while let Ok(cmd) = rx.try_recv() {
                take(&shared, &mut pending, cmd).await;
            }
            fail_all(&shared, &mut pending, condition, &text).await;
            return;
        }
        back_off(&shared, &mut pending, &mut rx, failures).await;
    }
    hand_over(&shared, &domain, pending, rx, &me).await;
}

/// One stream, from connecting to its end; `None` when it ended well.
async fn attempt(
    shared: &Arc<Shared>,
    domain: &str,
    pending: &mut Pending,
    rx: &mut mpsc::Receiver<Command>,
    failures: &mut u32,
) -> Option<Failure> {
    let negotiated =
        tokio::time::timeout(shared.settings.connect_timeout, negotiate(shared, domain))
            .await
            .unwrap_or(Err(ConnectError::Timeout));
    let opened = match negotiated {
        Ok(opened) => opened,
        Err(e) => {
            *failures += 1;
            tracing::info!(error = %e, attempt = *failures, "cannot open s2s stream");
            let condition = match e {
                ConnectError::Timeout => DefinedCondition::RemoteServerTimeout,
                _ => DefinedCondition::RemoteServerNotFound,
            };
            return Some((condition, format!("cannot reach {domain}: {e}"), false));
        }
    };
    *failures = 0;
    match session(shared, domain, opened, pending, rx).await {
        Ended::Done => None,
        Ended::Refused(verdict) => {
            shared.metrics.auth("dialback-out", "refused");
            Some((
                DefinedCondition::RemoteServerNotFound,
                format!("{domain} refused our dialback key ({verdict:?})"),
                true,
            ))
        }
        Ended::Lost(why) => {
            *failures += 1;
            Some((DefinedCondition::RemoteServerNotFound, why, false))
        }
    }
}

/// Backoff with jitter: 1 s, 2 s, … while commands keep queueing.
async fn back_off(
    shared: &Arc<Shared>,
    pending: &mut Pending,
    rx: &mut mpsc::Receiver<Command>,
    failures: u32,
) {
    let jitter = Duration::from_millis(510).mul_f64(crate::random::unit());
    let delay = Duration::from_millis(1000 * u64::from(failures)) + jitter;
    let wake = Instant::now() + delay;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => break,
            cmd = rx.recv() => match cmd {
                Some(cmd) => take(shared, pending, cmd).await,
                None => break,
            },
        }
    }
}

/// The stream is done: stanzas that came in as it was ending go out on a
/// new one, and whatever cannot is answered with an error.
async fn hand_over(
    shared: &Arc<Shared>,
    domain: &str,
    mut pending: Pending,
    mut rx: mpsc::Receiver<Command>,
    me: &Outbound,
) {
    shared.forget_outbound(domain, me);
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        take(shared, &mut pending, cmd).await;
    }
    if !pending.stanzas.is_empty() {
        let next = shared.outbound(domain);
        let mut refused = VecDeque::new();
        for (stanza, written) in pending.stanzas.drain(..) {
            match next.try_send(stanza, written) {
                Ok(()) => {}
                Err(Refused::Closed(stanza, written)) => refused.push_back((*stanza, written)),
                // Full: its waiter sends again; nobody waits for the rest.
                Err(Refused::Full) => {}
            }
        }
        pending.stanzas = refused;
    }
    fail_all(
        shared,
        &mut pending,
        DefinedCondition::RemoteServerNotFound,
        "stream closed",
    )
    .await;
}

/// Queues a command, bouncing stanzas beyond the queue limit.
async fn take(shared: &Arc<Shared>, pending: &mut Pending, cmd: Command) {
    match cmd {
        Command::Send(stanza, written) => {
            if pending.stanzas.len() >= shared.settings.queue_limit {
                // A waiter (the outbox) hears of it by its dropped sender and
                // sends again; a bounce as well would make it twice.
                if written.is_none() {
                    shared
                        .bounce(
                            &stanza,
                            DefinedCondition::ResourceConstraint,
                            "too many stanzas queued for this domain",
                        )
                        .await;
                }
            } else {
                pending.stanzas.push_back((*stanza, written));
            }
        }
        Command::Verify { id, key, reply } => pending.verifies.push((id, key, reply)),
    }
}

async fn fail_all(
    shared: &Arc<Shared>,
    pending: &mut Pending,
    condition: DefinedCondition,
    text: &str,
) {
    for (_, _, reply) in pending.verifies.drain(..) {
        let _ = reply.send(Verdict::Error);
    }
    // Whoever waited to hear that one went out learns it did not (and sends
    // again, or gives up itself); the others bounce.
    for (stanza, written) in pending.stanzas.drain(..) {
        if written.is_none() {
            shared.bounce(&stanza, condition.clone(), text).await;
        }
    }
}
