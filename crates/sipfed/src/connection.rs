//! An outbound connection, kept and reused: one TLS connection per peer
//! address carries every request to it (RFC 3261 §18.1.1; Microsoft's edges
//! keep theirs open with keep-alives), responses are matched to their
//! transaction by `Message::transaction_id`, and requests the peer sends back on it
//! are answered by the edge like any other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;

use crate::message::Message;

pub(crate) struct Connection {
    writer: tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Message>>>,
    closed: AtomicBool,
}

impl Connection {
    pub(crate) fn new(writer: WriteHalf<TlsStream<TcpStream>>) -> Self {
        Self {
            writer: tokio::sync::Mutex::new(writer),
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) async fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut writer = self.writer.lock().await;
        let written = writer.write_all(bytes).await;
        if written.is_err() {
            self.close();
        }
        written
    }

    /// A receiver for the final response of the transaction `key`.
    pub(crate) fn expect(&self, key: String) -> oneshot::Receiver<Message> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(key, tx);
        rx
    }

    /// Hands a final response to its transaction; `false` if none waits.
    pub(crate) fn deliver(&self, response: Message) -> bool {
        let waiting = response
            .transaction_id()
            .and_then(|key| self.lock().remove(&key));
        waiting.is_some_and(|tx| tx.send(response).is_ok())
    }

    /// No more requests go on it; those waiting learn it closed.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.lock().clear();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Message>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}
