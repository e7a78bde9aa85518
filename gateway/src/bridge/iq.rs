//! IQs the bridge sends and the answers it waits for (a remote contact's
//! vCard): each request gets a fresh id, and the answer with that id is
//! handed back to whoever asked, or dropped when nobody waits any more.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;
use xmpp_parsers::iq::Iq;

use crate::bridge::XmppOut;
use crate::s2s::{SendError, Stanza};

#[derive(Debug, thiserror::Error)]
pub enum IqError {
    #[error("not sent: {0}")]
    Send(#[from] SendError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

#[derive(Default)]
pub struct Requests {
    waiting: Mutex<HashMap<String, oneshot::Sender<Iq>>>,
}

impl Requests {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Iq>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `iq` (its id replaced by a fresh one) and waits for the answer:
    /// a result or an error IQ.
    pub async fn request(
        &self,
        out: &dyn XmppOut,
        mut iq: Iq,
        timeout: Duration,
    ) -> Result<Iq, IqError> {
        let id = fresh_id();
        match &mut iq {
            Iq::Get { id: i, .. }
            | Iq::Set { id: i, .. }
            | Iq::Result { id: i, .. }
            | Iq::Error { id: i, .. } => *i = id.clone(),
        }
        let (tx, rx) = oneshot::channel();
        self.waiting().insert(id.clone(), tx);
        if let Err(e) = out.send(Stanza::Iq(iq)).await {
            self.waiting().remove(&id);
            return Err(e.into());
        }
        let answer = tokio::time::timeout(timeout, rx).await;
        self.waiting().remove(&id);
        match answer {
            Ok(Ok(iq)) => Ok(iq),
            _ => Err(IqError::Timeout(timeout)),
        }
    }

    /// Takes an IQ answer if someone waits for it; gives it back otherwise.
    pub fn resolve(&self, iq: Iq) -> Option<Iq> {
        let id = match &iq {
            Iq::Result { id, .. } | Iq::Error { id, .. } => id.clone(),
            _ => return Some(iq),
        };
        match self.waiting().remove(&id) {
            Some(tx) => {
                let _ = tx.send(iq);
                None
            }
            None => Some(iq),
        }
    }
}

fn fresh_id() -> String {
    format!("xmppfed-{}", crate::random::hex(12))
}
