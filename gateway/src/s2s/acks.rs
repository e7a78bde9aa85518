//! XEP-0198 stream management, receiving side, on inbound streams: a peer
//! that enables it learns, through `<a h='n'/>`, how many of its stanzas we
//! have *handled* — for messages, written to the outbox — so that after a
//! crash it sends again (or bounces) exactly those we never took. Resumption
//! is not offered: a new stream starts counting again.

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

#[cfg(test)]
mod tests {
    use super::*;

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
