//! XEP-0198 stream management, both sides.
//!
//! Receiving, on inbound streams: a peer that enables it learns, through
//! `<a h='n'/>`, how many of its stanzas we have *handled* — for messages,
//! written to the outbox — so that after a crash it sends again (or bounces)
//! exactly those we never took.
//!
//! Sending, on outbound streams (`Unacked`): where the peer offers it, a
//! stanza whose sender waits to hear it went out (the bridge's outbox) is
//! reported only once the peer acknowledges it, not when it is written: a
//! peer that crashes, or a connection that dies with bytes in flight, loses
//! nothing the outbox let go. Resumption is not used on either side: a new
//! stream starts counting again.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::stanza::Stanza;

pub const NS_SM: &str = "urn:xmpp:sm:3";

/// The handled count of one stream.
#[derive(Default)]
pub struct Acks {
    /// (stanzas handled in a row from the first, handled ones beyond a gap).
    state: Mutex<(u64, BTreeSet<u64>)>,
    pub changed: Notify,
}

impl Acks {
    /// The `h` to report: stanzas 1..=h are all handled (XEP-0198 counts mod 2³²).
    pub fn h(&self) -> u32 {
        (self.state.lock().unwrap_or_else(|p| p.into_inner()).0 % (1 << 32)) as u32
    }

    fn done(&self, seq: u64) {
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let (h, beyond) = &mut *state;
            if seq == *h + 1 {
                *h += 1;
                while beyond.remove(&(*h + 1)) {
                    *h += 1;
                }
            } else if seq > *h {
                beyond.insert(seq);
            }
        }
        self.changed.notify_one();
    }
}

/// One received stanza's acknowledgement: whoever handles the stanza calls
/// `handled` once it is safe. Dropped without that (a panic, a bridge that
/// is gone) the stanza is never acknowledged, and the peer sends it again
/// on its next stream (or bounces it): nothing is acknowledged by accident.
pub struct Ack {
    acks: Arc<Acks>,
    seq: u64,
}

impl Ack {
    pub fn new(acks: Arc<Acks>, seq: u64) -> Self {
        Self { acks, seq }
    }

    pub fn handled(self) {
        self.acks.done(self.seq);
    }
}

/// A stanza for the bridge, with its acknowledgement (when the peer asked
/// for them): drop it once the stanza is handled.
pub struct Incoming {
    pub stanza: Stanza,
    pub ack: Option<Ack>,
}

impl Incoming {
    /// The stanza, acknowledged as handled.
    pub fn take(self) -> Stanza {
        if let Some(ack) = self.ack {
            ack.handled();
        }
        self.stanza
    }
}

/// What the s2s layer hands the bridge.
pub struct Inbox {
    pub(crate) rx: tokio::sync::mpsc::Receiver<Incoming>,
}

impl Inbox {
    /// An inbox fed by the returned sender (tests, tools).
    pub fn channel(capacity: usize) -> (tokio::sync::mpsc::Sender<Incoming>, Inbox) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        (tx, Inbox { rx })
    }

    /// The next stanza with its acknowledgement.
    pub async fn next(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }

    /// A stanza if one is waiting now, taken as handled.
    pub fn try_recv(&mut self) -> Result<Stanza, tokio::sync::mpsc::error::TryRecvError> {
        self.rx.try_recv().map(Incoming::take)
    }

    /// The next stanza, taken as handled at once (tests, tools).
    pub async fn recv(&mut self) -> Option<Stanza> {
        self.rx.recv().await.map(Incoming::take)
    }
}

/// `<a h='n'/>`: how many stanzas of the stream were handled.
pub fn ack_element(h: u32) -> xmpp_parsers::sm::A {
    xmpp_parsers::sm::A::new(h)
}

/// Stream management on an inbound stream, once the peer enabled it: the
/// stanzas received (each acknowledged once handled) and the last `h` told.
pub struct Receiving {
    pub acks: Arc<Acks>,
    received: u64,
    reported: u32,
}

impl Receiving {
    /// No resumption: a new stream counts from zero.
    pub fn new() -> Self {
        Self {
            acks: Arc::new(Acks::default()),
            received: 0,
            reported: 0,
        }
    }

    /// The acknowledgement that goes with the next stanza received.
    pub fn received(&mut self) -> Ack {
        self.received += 1;
        Ack::new(self.acks.clone(), self.received)
    }

    /// `h` to tell the peer: always when asked, otherwise only when it moved.
    pub fn report(&mut self, asked: bool) -> Option<u32> {
        let h = self.acks.h();
        let moved = h != self.reported;
        self.reported = h;
        (asked || moved).then_some(h)
    }
}

impl Default for Receiving {
    fn default() -> Self {
        Self::new()
    }
}

/// A stanza sent on a stream with stream management, not acknowledged yet,
/// and who waits to hear that it was.
type Sent = (Stanza, Option<tokio::sync::oneshot::Sender<()>>);

/// The stanzas sent on an outbound stream and not yet acknowledged.
#[derive(Default)]
pub struct Unacked {
    queue: std::collections::VecDeque<Sent>,
    /// The peer's last `h` (XEP-0198 counts mod 2³²).
    acked: u32,
}

/// An `<a h/>` acknowledging more stanzas than were sent.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany {
    pub h: u32,
    pub sent: u32,
}

impl Unacked {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// A stanza was written; its waiter hears when it is acknowledged.
    pub fn sent(&mut self, stanza: Stanza, written: Option<tokio::sync::oneshot::Sender<()>>) {
        self.queue.push_back((stanza, written));
    }

    /// The peer has handled `h` stanzas since the stream started: the
    /// oldest ones are done and their waiters told.
    pub fn acked(&mut self, h: u32) -> Result<usize, TooMany> {
        let newly = h.wrapping_sub(self.acked) as usize;
        if newly > self.queue.len() {
            return Err(TooMany {
                h,
                sent: self.acked.wrapping_add(self.queue.len() as u32),
            });
        }
        for (_, written) in self.queue.drain(..newly) {
            if let Some(written) = written {
                let _ = written.send(());
            }
        }
        self.acked = h;
        Ok(newly)
    }

    /// The stream is gone with these unacknowledged: the stanzas nobody
    /// waits for are given back, in order, to go out on the next stream;
    /// the waiters of the others learn they were not delivered (the outbox
    /// sends them again itself).
    pub fn lost(self) -> Vec<Stanza> {
        self.queue
            .into_iter()
            .filter_map(|(stanza, written)| written.is_none().then_some(stanza))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str) -> Stanza {
        let mut m = xmpp_parsers::message::Message::new(None);
        m.id = Some(xmpp_parsers::message::Id(id.into()));
        Stanza::Message(m)
    }

    fn id(s: &Stanza) -> String {
        match s {
            Stanza::Message(m) => m.id.as_ref().map(|i| i.0.clone()).unwrap_or_default(),
            _ => String::new(),
        }
    }

    #[tokio::test]
    async fn waiters_hear_of_their_stanza_once_the_peer_acknowledges_it() {
        let mut unacked = Unacked::default();
        let (tx1, mut rx1) = tokio::sync::oneshot::channel();
        let (tx3, rx3) = tokio::sync::oneshot::channel();
        unacked.sent(message("1"), Some(tx1));
        unacked.sent(message("2"), None);
        unacked.sent(message("3"), Some(tx3));
        assert!(rx1.try_recv().is_err(), "written is not acknowledged");
        assert_eq!(unacked.acked(2), Ok(2));
        assert_eq!(rx1.await, Ok(()));
        assert_eq!(unacked.acked(2), Ok(0), "the same h again: nothing new");
        assert_eq!(unacked.acked(5), Err(TooMany { h: 5, sent: 3 }));
        // The stream dies with 3 and 4 unacknowledged: 3's waiter learns it was
        // not delivered (and sends again itself); 4, which nobody waits for,
        // comes back to go out on the next stream.
        unacked.sent(message("4"), None);
        let resend = unacked.lost();
        assert!(rx3.await.is_err());
        assert_eq!(resend.iter().map(id).collect::<Vec<_>>(), ["4"]);
    }

    #[test]
    fn the_count_wraps_at_two_to_the_thirty_two() {
        let mut unacked = Unacked {
            acked: u32::MAX,
            ..Unacked::default()
        };
        unacked.sent(message("a"), None);
        unacked.sent(message("b"), None);
        assert_eq!(unacked.acked(1), Ok(2), "u32::MAX + 2 wraps to 1");
        assert!(unacked.is_empty());
    }

    #[test]
    fn h_counts_only_what_is_handled_in_a_row() {
        let acks = Arc::new(Acks::default());
        let [a1, a2, a3, a4] = [1, 2, 3, 4].map(|n| Ack::new(acks.clone(), n));
        a2.handled();
        assert_eq!(acks.h(), 0, "stanza 1 is not handled yet");
        a1.handled();
        assert_eq!(acks.h(), 2);
        a3.handled();
        assert_eq!(acks.h(), 3);
        drop(a4);
        assert_eq!(
            acks.h(),
            3,
            "dropped without being handled: never acknowledged"
        );
    }
}
