//! Answers vcard-temp requests for Teams users from their Graph profile and
//! photo, cached for a while (profiles change rarely; Graph calls are budgeted).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::sync::Mutex;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use crate::bridge::contacts::vcard;
use crate::bridge::users::directory::Directory;
use crate::graph::GraphClient;
use crate::s2s::stanza::{self, Stanza};

/// A card as cached: when it was read, the card, its photo's hash.
struct Cached {
    at: Instant,
    card: Element,
    photo_hash: Option<String>,
}

pub struct Cards {
    directory: Directory,
    ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Cards {
    pub fn new(directory: Directory, ttl: Duration) -> Self {
        Self {
            directory,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The card of a Teams user (by JID local part) and its photo hash, from
    /// the cache while fresh.
    pub async fn card(
        &self,
        graph: &GraphClient,
        local: &str,
    ) -> Result<Option<(Element, Option<String>)>, crate::graph::GraphError> {
        let key = local.to_lowercase();
        if let Some(cached) = self.lock().get(&key)
            && cached.at.elapsed() < self.ttl
        {
            return Ok(Some((cached.card.clone(), cached.photo_hash.clone())));
        }
        let Some(user) = self.directory.user(&key) else {
            return Ok(None);
        };
        let photo = graph.get_photo(&user.id).await?;
        let card = vcard::from_profile(
            &user,
            photo.as_ref().map(|(t, b)| (t.as_str(), b.as_slice())),
        );
        let hash = photo.as_ref().map(|(_, b)| vcard::photo_hash(b));
        let cached = Cached {
            at: Instant::now(),
            card: card.clone(),
            photo_hash: hash.clone(),
        };
        self.lock().insert(key, cached);
        Ok(Some((card, hash)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The photo hash of a Teams user as last read, without asking Graph:
    /// `None` when the card has not been read yet (XEP-0153's "not ready").
    pub fn known_photo_hash(&self, local: &str) -> Option<Option<String>> {
        self.lock()
            .get(&local.to_lowercase())
            .map(|c| c.photo_hash.clone())
    }

    /// The answer to an `<iq type='get'><vCard xmlns='vcard-temp'/></iq>` for
    /// one of our users; `None` when the stanza is not such a request.
    pub async fn answer(&self, graph: &GraphClient, stanza: &Stanza) -> Option<Stanza> {
        let Stanza::Iq(Iq::Get {
            from,
            to,
            id,
            payload,
        }) = stanza
        else {
            return None;
        };
        if !payload.is("vCard", ns::VCARD) {
            return None;
        }
        let local = to.as_ref()?.node()?.as_str().to_owned();
        match self.card(graph, &local).await {
            Ok(Some((card, _))) => Some(Stanza::Iq(Iq::Result {
                from: to.clone(),
                to: from.clone(),
                id: id.clone(),
                payload: Some(card),
            })),
            Ok(None) => stanza::error_reply(
                stanza,
                DefinedCondition::ServiceUnavailable,
                ErrorType::Cancel,
                "no such user",
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a profile for vcard-temp");
                stanza::error_reply(
                    stanza,
                    DefinedCondition::InternalServerError,
                    ErrorType::Wait,
                    "the profile cannot be read now",
                )
            }
        }
    }
}
