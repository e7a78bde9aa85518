//! Microsoft's per-category throttling, as
//! https://learn.microsoft.com/graph/throttling-limits documents it
//! ("Microsoft Teams service limits" and "Cloud communication service
//! limits"): each limit counted per app per tenant, and the chat-message
//! limits also per app per chat; over a limit Graph answers 429 with
//! `Retry-After`. Counted over sliding windows, so that bursts at a window's
//! edge are refused as a token bucket would refuse them.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// `teamsLimits` in the seed: Microsoft's published numbers unless changed.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TeamsLimits {
    /// POST chat message: 20 requests per second per app per tenant.
    pub chat_message_send_per_second: u32,
    /// GET chat message(s): 20 per second per app per tenant.
    pub chat_message_read_per_second: u32,
    /// POST and GET chat message: 1 per second per app per chat.
    pub per_chat_per_second: u32,
    /// getAllMessages: 200 per second per app per tenant.
    pub all_messages_per_second: u32,
    /// Other Teams calls: 30 per second per app per tenant.
    pub teams_other_per_second: u32,
    /// Presence: 1,500 requests per 30 seconds per app per tenant.
    pub presence_per_30s: u32,
}

impl Default for TeamsLimits {
    fn default() -> Self {
        Self {
            chat_message_send_per_second: 20,
            chat_message_read_per_second: 20,
            per_chat_per_second: 1,
            all_messages_per_second: 200,
            teams_other_per_second: 30,
            presence_per_30s: 1_500,
        }
    }
}

/// One request as Graph's throttling sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limited {
    ChatMessageSend,
    ChatMessageRead,
    AllMessages,
    TeamsOther,
    Presence,
}

impl Limited {
    pub fn name(self) -> &'static str {
        match self {
            Limited::ChatMessageSend => "POST chat message",
            Limited::ChatMessageRead => "GET chat message",
            Limited::AllMessages => "getAllMessages",
            Limited::TeamsOther => "other Teams",
            Limited::Presence => "presence",
        }
    }
}

/// Which Teams limit a request falls under, and its chat; `None` for
/// everything else (the directory has its own, resource-unit based limits).
pub fn limited<'a>(method: &str, segments: &[&'a str]) -> Option<(Limited, Option<&'a str>)> {
    let s = match segments {
        ["users", _, rest @ ..] if rest.first() == Some(&"chats") => rest,
        s => s,
    };
    Some(match s {
        ["chats", "getAllMessages", ..] => (Limited::AllMessages, None),
        ["chats", chat, "messages", ..] if method == "GET" => {
            (Limited::ChatMessageRead, Some(*chat))
        }
        ["chats", chat, "messages", ..] => (Limited::ChatMessageSend, Some(*chat)),
        ["chats", ..] | ["teams", ..] => (Limited::TeamsOther, None),
        ["communications", "getPresencesByUserId"] => (Limited::Presence, None),
        [.., "presence"] | [.., "presence", _] => (Limited::Presence, None),
        _ => return None,
    })
}

/// Sliding-window counters per (app, limit, chat).
#[derive(Debug, Default)]
pub struct Throttling {
    pub limits: Option<TeamsLimits>,
    windows: HashMap<(String, Limited, Option<String>), VecDeque<Instant>>,
    /// Requests refused with 429, by limit name, for tests to assert on.
    pub refused: HashMap<&'static str, u32>,
}

impl Throttling {
    pub fn new(limits: Option<TeamsLimits>) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Counts one request; `Some(retry_after_secs)` when it is over a limit
    /// (a refused request is not counted, as Graph does not serve it).
    pub fn check(
        &mut self,
        app: &str,
        limited: Limited,
        chat: Option<&str>,
        now: Instant,
    ) -> Option<u64> {
        let limits = self.limits.as_ref()?;
        let (tenant_max, window) = match limited {
            Limited::ChatMessageSend => (limits.chat_message_send_per_second, 1),
            Limited::ChatMessageRead => (limits.chat_message_read_per_second, 1),
            Limited::AllMessages => (limits.all_messages_per_second, 1),
            Limited::TeamsOther => (limits.teams_other_per_second, 1),
            Limited::Presence => (limits.presence_per_30s, 30),
        };
        let mut keys = vec![((app.to_owned(), limited, None), tenant_max, window)];
        if let Some(chat) = chat {
            keys.push((
                (app.to_owned(), limited, Some(chat.to_owned())),
                limits.per_chat_per_second,
                1,
            ));
        }
        let mut retry_after = None;
        for (key, max, window) in &keys {
            let window = Duration::from_secs(*window);
            let log = self.windows.entry(key.clone()).or_default();
            while log
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                log.pop_front();
            }
            if log.len() >= *max as usize {
                let oldest = log.front().copied().unwrap_or(now);
                let wait = (window - now.duration_since(oldest)).as_secs_f64().ceil() as u64;
                retry_after = Some(retry_after.unwrap_or(0).max(wait.max(1)));
            }
        }
        if retry_after.is_some() {
            *self.refused.entry(limited.name()).or_default() += 1;
            return retry_after;
        }
        for (key, _, _) in keys {
            self.windows.entry(key).or_default().push_back(now);
        }
        None
    }

    /// 429s answered so far, over every limit.
    pub fn refused_total(&self) -> u32 {
        self.refused.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_takes_one_message_per_second_and_the_tenant_twenty() {
        let mut t = Throttling::new(Some(TeamsLimits::default()));
        let now = Instant::now();
        assert_eq!(
            t.check("app", Limited::ChatMessageSend, Some("c1"), now),
            None
        );
        assert_eq!(
            t.check("app", Limited::ChatMessageSend, Some("c1"), now),
            Some(1)
        );
        for chat in 2..=20 {
            let chat = format!("c{chat}");
            assert_eq!(
                t.check("app", Limited::ChatMessageSend, Some(&chat), now),
                None
            );
        }
        assert!(
            t.check("app", Limited::ChatMessageSend, Some("c21"), now)
                .is_some(),
            "the 21st in one second is over the tenant's 20"
        );
        let later = now + Duration::from_secs(1);
        assert_eq!(
            t.check("app", Limited::ChatMessageSend, Some("c1"), later),
            None
        );
        assert_eq!(t.refused["POST chat message"], 2);
    }

    #[test]
    fn requests_are_limited_by_their_category() {
        let l = |m, p: &[&str]| limited(m, p).map(|(l, c)| (l, c.map(str::to_owned)));
        assert_eq!(
            l("POST", &["chats", "19:a", "messages"]),
            Some((Limited::ChatMessageSend, Some("19:a".into())))
        );
        assert_eq!(
            l("GET", &["users", "u", "chats", "19:a", "messages"]),
            Some((Limited::ChatMessageRead, Some("19:a".into())))
        );
        assert_eq!(
            l("POST", &["users", "u", "presence", "setPresence"]),
            Some((Limited::Presence, None))
        );
        assert_eq!(l("POST", &["chats"]), Some((Limited::TeamsOther, None)));
        assert_eq!(l("GET", &["users", "alice"]), None);
    }
}
