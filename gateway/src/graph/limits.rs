//! One request budget per category Graph throttles on its own
//! (https://learn.microsoft.com/graph/throttling-limits): chat-message POSTs
//! and GETs (per tenant, and 1/s per chat), presence, `getAllMessages`, other
//! Teams calls, and the directory. A 429 pauses only its category.

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use reqwest::Method;
use tokio::sync::Mutex;
use tokio::time::Instant;
use xmppfed_config::GraphLimits;
use xmppfed_telemetry::Metrics;

use super::budget::{Budget, Slot};

/// What Graph counts a request against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    ChatMessageSend,
    ChatMessageRead,
    Presence,
    AllMessages,
    Teams,
    Directory,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::ChatMessageSend,
        Category::ChatMessageRead,
        Category::Presence,
        Category::AllMessages,
        Category::Teams,
        Category::Directory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::ChatMessageSend => "chat_message_send",
            Category::ChatMessageRead => "chat_message_read",
            Category::Presence => "presence",
            Category::AllMessages => "all_messages",
            Category::Teams => "teams",
            Category::Directory => "directory",
        }
    }
}

/// A request's category, and its chat where Graph also limits per chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub category: Category,
    pub chat: Option<String>,
}

/// Which budget a request spends, from its method and path (without the
/// `/v1.0` base; query strings ignored).
pub fn classify(method: &Method, path: &str) -> Route {
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let route = |category, chat: Option<&str>| Route {
        category,
        chat: chat.map(str::to_owned),
    };
    match segments.as_slice() {
        ["chats", "getAllMessages" | "getAllMessages()", ..]
        | [
            "users",
            _,
            "chats",
            "getAllMessages" | "getAllMessages()",
            ..,
        ] => route(Category::AllMessages, None),
        ["chats", chat, "messages", ..] | ["users", _, "chats", chat, "messages", ..] => {
            if *method == Method::GET {
                route(Category::ChatMessageRead, Some(chat))
            } else {
                route(Category::ChatMessageSend, Some(chat))
            }
        }
        [
            ..,
            "presence"
            | "presences"
            | "getPresencesByUserId"
            | "setPresence"
            | "clearPresence"
            | "setStatusMessage"
            | "setUserPreferredPresence"
            | "clearUserPreferredPresence",
        ] => route(Category::Presence, None),
        ["communications", ..] => route(Category::Presence, None),
        ["chats", ..] | ["teams", ..] | ["subscriptions", ..] | ["users", _, "chats", ..] => {
            route(Category::Teams, None)
        }
        _ => route(Category::Directory, None),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CategoryLabel {
    category: &'static str,
}

/// Per-category use, limits and 429s (`xmppfed_graph_requests_total`,
/// `xmppfed_graph_limit_per_second`, `xmppfed_graph_throttled_total`).
#[derive(Debug, Default, Clone)]
pub struct LimitMetrics {
    requests: Family<CategoryLabel, Counter>,
    limit: Family<CategoryLabel, Gauge>,
    throttled: Family<CategoryLabel, Counter>,
}

impl LimitMetrics {
    /// Exposes the figures in `metrics` under `prefix` (`graph`; the shadow
    /// accounts' own tenant `graph_shadow_tenant`); they count from the client's start.
    pub fn register(&self, metrics: &Metrics, prefix: &str) {
        metrics.register(
            &format!("{prefix}_requests"),
            "Graph requests sent, by throttling category",
            self.requests.clone(),
        );
        metrics.register(
            &format!("{prefix}_limit_per_second"),
            "The rate the gateway keeps to, by throttling category",
            self.limit.clone(),
        );
        metrics.register(
            &format!("{prefix}_throttled"),
            "429 answers from Graph, by throttling category",
            self.throttled.clone(),
        );
    }

    fn label(category: Category) -> CategoryLabel {
        CategoryLabel {
            category: category.as_str(),
        }
    }

    /// 429s seen in a category so far.
    pub fn throttled(&self, category: Category) -> u64 {
        self.throttled.get_or_create(&Self::label(category)).get()
    }

    /// Requests sent in a category so far.
    pub fn requests(&self, category: Category) -> u64 {
        self.requests.get_or_create(&Self::label(category)).get()
    }
}

/// Chats remembered for per-chat spacing before idle ones are forgotten.
const CHATS_KEPT: usize = 10_000;

/// The gateway's budgets: one window per category for the tenant (see
/// `budget`), and
/// per chat a schedule of slots `per_chat` apart, taken in turn, so that a
/// busy chat waits for its own slots and never for anyone else's.
#[derive(Debug)]
pub struct Budgets {
    categories: HashMap<Category, Budget>,
    per_chat: Option<Duration>,
    chats: Mutex<HashMap<(Category, String), Instant>>,
    metrics: LimitMetrics,
}

impl Budgets {
    /// The configured limits.
    pub fn new(limits: &GraphLimits) -> Self {
        let rate = |category| match category {
            Category::ChatMessageSend => limits.chat_message_send_per_second,
            Category::ChatMessageRead => limits.chat_message_read_per_second,
            Category::Presence => limits.presence_per_second,
            Category::AllMessages => limits.all_messages_per_second,
            Category::Teams => limits.teams_other_per_second,
            Category::Directory => limits.directory_per_second,
        };
        let per_chat = Duration::from_millis(u64::from(limits.per_chat_interval_ms));
        Self::build(rate, Some(per_chat))
    }

    /// Microsoft's published limits less a margin (the defaults).
    pub fn published_limits() -> Self {
        Self::new(&GraphLimits::default())
    }

    /// The same rate for every category and no per-chat spacing (tests that
    /// are not about throttling).
    pub fn uniform(per_second: u32) -> Self {
        Self::build(|_| per_second, None)
    }

    fn build(rate: impl Fn(Category) -> u32, per_chat: Option<Duration>) -> Self {
        let metrics = LimitMetrics::default();
        let categories = Category::ALL
            .into_iter()
            .map(|c| {
                let per_second = rate(c);
                metrics
                    .limit
                    .get_or_create(&LimitMetrics::label(c))
                    .set(i64::from(per_second));
                (c, Budget::new(per_second))
            })
            .collect();
        Self {
            categories,
            per_chat,
            chats: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    pub fn metrics(&self) -> &LimitMetrics {
        &self.metrics
    }

    fn budget(&self, category: Category) -> &Budget {
        // Every category is built in `build`; Directory is the fallback.
        self.categories
            .get(&category)
            .or_else(|| self.categories.get(&Category::Directory))
            .unwrap_or_else(|| unreachable!("budgets are built for every category"))
    }

    /// Waits for the request's chat slot, then for a place in its
    /// category's window, held until the answer (`done`).
    pub async fn acquire(&self, route: &Route) -> Slot<'_> {
        if let (Some(interval), Some(chat)) = (self.per_chat, &route.chat) {
            let slot = {
                let mut chats = self.chats.lock().await;
                let now = Instant::now();
                if chats.len() >= CHATS_KEPT {
                    chats.retain(|_, next| *next > now);
                }
                let next = chats.entry((route.category, chat.clone())).or_insert(now);
                let slot = (*next).max(now);
                *next = slot + interval;
                slot
            };
            tokio::time::sleep_until(slot).await;
        }
        let slot = self.budget(route.category).acquire().await;
        self.metrics
            .requests
            .get_or_create(&LimitMetrics::label(route.category))
            .inc();
        slot
    }

    /// The request on `route` has been answered (or given up): its chat's
    /// next request waits a whole interval from now. Slots are taken when a
    /// request is admitted, but the category's budget or a sign-in may
    /// delay it further, and Graph counts requests as they arrive: spacing
    /// from the answer keeps two in one chat an interval apart at Graph,
    /// whatever the delays in between.
    pub async fn done(&self, route: &Route, slot: Slot<'_>) {
        drop(slot);
        if let (Some(interval), Some(chat)) = (self.per_chat, &route.chat) {
            let mut chats = self.chats.lock().await;
            let next = chats
                .entry((route.category, chat.clone()))
                .or_insert_with(Instant::now);
            *next = (*next).max(Instant::now() + interval);
        }
    }

    /// Graph answered 429: this category (only) waits until `until`.
    pub async fn throttled(&self, route: &Route, until: Instant) {
        self.metrics
            .throttled
            .get_or_create(&LimitMetrics::label(route.category))
            .inc();
        self.budget(route.category).pause_until(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_as_graph_throttles_them() {
        let c = |m: Method, p: &str| classify(&m, p);
        assert_eq!(
            c(Method::POST, "/chats/19:abc@unq.gbl.spaces/messages"),
            Route {
                category: Category::ChatMessageSend,
                chat: Some("19:abc@unq.gbl.spaces".into())
            }
        );
        assert_eq!(
            c(Method::GET, "/chats/19:x/messages?$top=50").category,
            Category::ChatMessageRead
        );
        assert_eq!(
            c(Method::GET, "/users/u1/chats/getAllMessages").category,
            Category::AllMessages
        );
        assert_eq!(
            c(Method::POST, "/users/u1/presence/setPresence").category,
            Category::Presence
        );
        assert_eq!(
            c(Method::POST, "/communications/getPresencesByUserId").category,
            Category::Presence
        );
        assert_eq!(c(Method::POST, "/chats").category, Category::Teams);
        assert_eq!(c(Method::POST, "/subscriptions").category, Category::Teams);
        assert_eq!(
            c(Method::GET, "/users/alice@contoso.com").category,
            Category::Directory
        );
        assert_eq!(c(Method::POST, "/$batch").category, Category::Directory);
    }

    #[tokio::test(start_paused = true)]
    async fn a_chat_waits_an_interval_from_the_answer_not_from_the_slot() {
        let budgets = Budgets::published_limits();
        let send = classify(&Method::POST, "/chats/c/messages");
        let slot = budgets.acquire(&send).await;
        // The request took 800 ms to go out and be answered (a full tenant
        // budget, a sign-in): the next one waits 1,050 ms from the answer.
        tokio::time::sleep(Duration::from_millis(800)).await;
        budgets.done(&send, slot).await;
        let answered = Instant::now();
        drop(budgets.acquire(&send).await);
        assert_eq!(answered.elapsed(), Duration::from_millis(1_050));
    }

    #[tokio::test(start_paused = true)]
    async fn a_chat_gets_one_slot_per_interval_and_others_are_not_delayed() {
        let budgets = Budgets::published_limits();
        let busy = classify(&Method::POST, "/chats/busy/messages");
        let quiet = classify(&Method::POST, "/chats/quiet/messages");
        let start = Instant::now();
        for _ in 0..5 {
            drop(budgets.acquire(&busy).await);
        }
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(4 * 1_050),
            "five sends in one chat take four intervals"
        );
        let before = Instant::now();
        drop(budgets.acquire(&quiet).await);
        assert_eq!(
            before.elapsed(),
            Duration::ZERO,
            "another chat has its own slots"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_only_its_category() {
        let budgets = Budgets::published_limits();
        let send = classify(&Method::POST, "/chats/a/messages");
        let presence = classify(&Method::POST, "/users/u/presence/setPresence");
        budgets
            .throttled(&send, Instant::now() + Duration::from_secs(7))
            .await;
        let before = Instant::now();
        drop(budgets.acquire(&presence).await);
        assert_eq!(before.elapsed(), Duration::ZERO, "presence is not paused");
        drop(budgets.acquire(&send).await);
        assert_eq!(
            before.elapsed(),
            Duration::from_secs(7),
            "sends wait out the Retry-After"
        );
        assert_eq!(budgets.metrics().throttled(Category::ChatMessageSend), 1);
        assert_eq!(budgets.metrics().throttled(Category::Presence), 0);
    }
}
