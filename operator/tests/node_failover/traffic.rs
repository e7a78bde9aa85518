//! Messages both ways around a disruption, and what became of each: a
//! partner's user (Dave, on Prosody) writes to Alice in Teams while Alice
//! writes to him from Teams.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use xmppfed_e2e::cluster::eventually;
use xmppfed_e2e::xmpp_client::XmppClient;

use crate::node_peers::GraphPod;

/// Under the default per-contact throttle's burst (20), so that what comes
/// back to Dave is the disruption's doing, not the throttle's.
const TO_TEAMS: usize = 12;
/// Alice's messages: half before the disruption, half during it.
const TO_XMPP: usize = 6;
const SETTLE: Duration = Duration::from_secs(240);

/// One disruption's messages, named by its tag.
pub struct Burst {
    tag: String,
}

impl Burst {
    pub fn new(tag: &str) -> Self {
        Self {
            tag: tag.to_owned(),
        }
    }

    fn to_teams(&self, i: usize) -> String {
        format!("{} xmpp-to-teams {i:02} of {TO_TEAMS}", self.tag)
    }

    fn to_xmpp(&self, i: usize) -> String {
        format!("{} teams-to-xmpp {i:02} of {TO_XMPP}", self.tag)
    }

    fn id(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }
}

/// What became of a burst.
struct Outcome {
    delivered: usize,
    bounced: usize,
    answered: usize,
    /// When every message to Teams, and every one to XMPP, was accounted for.
    to_teams_settled: Duration,
    to_xmpp_settled: Duration,
}

pub struct Chat<'a> {
    graph: &'a GraphPod,
    dave: XmppClient,
    alice: String,
    id: String,
    outcomes: BTreeMap<String, Outcome>,
}

impl<'a> Chat<'a> {
    /// Dave subscribes to Alice and they exchange a first message: the chat
    /// exists in Teams, and both directions work.
    pub async fn open(graph: &'a GraphPod, mut dave: XmppClient, alice: &str) -> Self {
        dave.command(json!({"cmd": "subscribe", "to": alice}))
            .unwrap();
        tokio::task::block_in_place(|| {
            dave.wait_for(Duration::from_secs(90), |e| {
                e["event"] == "presence" && e["type"] == "subscribed" && e["from"] == alice
            })
        })
        .unwrap_or_else(|e| panic!("Dave's subscription to {alice}: {e:#}"));
        let hello = "Hello from Dave";
        dave.command(json!({"cmd": "message", "to": alice, "body": hello, "id": "hello"}))
            .unwrap();
        let id = eventually("Dave's chat in Teams", Duration::from_secs(90), || async {
            let state = graph.state().await;
            for chat in state["chats"].as_array()? {
                let id = chat["id"].as_str()?;
                if graph
                    .chat_contents(id)
                    .await
                    .iter()
                    .any(|c| c.contains(hello))
                {
                    return Some(id.to_owned());
                }
            }
            None
        })
        .await;
        let mut chat = Self {
            graph,
            dave,
            alice: alice.to_owned(),
            id,
            outcomes: BTreeMap::new(),
        };
        chat.alice_writes("Hello from Alice").await;
        chat.dave
            .wait_for_blocking(Duration::from_secs(90), "Hello from Alice");
        chat
    }

    async fn alice_writes(&self, text: &str) {
        self.graph
            .control(
                &format!("/_emulator/chats/{}/messages", self.id),
                json!({"from": "alice@contoso.example", "content": text, "contentType": "text"}),
            )
            .await;
    }

    /// Sends the burst both ways, runs `disrupt` 200 ms in (half of Alice's
    /// messages before it, half right after), then waits until every message
    /// is accounted for and checks that none came twice.
    pub async fn disrupted<T, F: std::future::Future<Output = T>>(
        &mut self,
        burst: &Burst,
        disrupt: impl FnOnce() -> F,
    ) -> T {
        for i in 0..TO_TEAMS {
            let body = burst.to_teams(i);
            self.dave
                .command(
                    json!({"cmd": "message", "to": self.alice, "body": body, "id": burst.id(i)}),
                )
                .unwrap();
        }
        for i in 0..TO_XMPP / 2 {
            self.alice_writes(&burst.to_xmpp(i)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let result = disrupt().await;
        for i in TO_XMPP / 2..TO_XMPP {
            self.alice_writes(&burst.to_xmpp(i)).await;
        }
        let outcome = self.settle(burst, started).await;
        self.outcomes.insert(burst.tag.clone(), outcome);
        result
    }

    /// Every message delivered, or (to Teams) bounced; then a few seconds
    /// more, and none may have come twice.
    async fn settle(&mut self, burst: &Burst, started: Instant) -> Outcome {
        let (to_teams_settled, to_xmpp_settled) = self.accounted(burst, started).await;
        // Anything sent twice would come within the next poll or retry.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (teams, bounced, answered) = self.count(burst).await;
        let twice: Vec<usize> = (0..TO_TEAMS).filter(|i| teams[*i] > 1).collect();
        assert!(twice.is_empty(), "{}: in Teams twice: {twice:?}", burst.tag);
        assert!(
            answered.iter().all(|n| *n == 1),
            "{}: Alice's messages reached Dave {answered:?} times",
            burst.tag
        );
        Outcome {
            delivered: teams.iter().filter(|n| **n == 1).count(),
            bounced: bounced.len(),
            answered: answered.len(),
            to_teams_settled,
            to_xmpp_settled,
        }
    }

    /// Waits until every message is delivered, or (to Teams) bounced: when
    /// each direction was done, from `started`.
    async fn accounted(&mut self, burst: &Burst, started: Instant) -> (Duration, Duration) {
        let deadline = Instant::now() + SETTLE;
        let (mut to_teams, mut to_xmpp) = (None, None);
        loop {
            let (teams, bounced, answered) = self.count(burst).await;
            if to_teams.is_none() && (0..TO_TEAMS).all(|i| teams[i] > 0 || bounced.contains(&i)) {
                to_teams = Some(started.elapsed());
            }
            if to_xmpp.is_none() && answered.iter().all(|n| *n > 0) {
                to_xmpp = Some(started.elapsed());
            }
            if let (Some(to_teams), Some(to_xmpp)) = (to_teams, to_xmpp) {
                return (to_teams, to_xmpp);
            }
            assert!(
                Instant::now() < deadline,
                "{}: not accounted for after {SETTLE:?}: to Teams (count per message) {teams:?}, \
                 bounced {bounced:?}, to XMPP {answered:?}",
                burst.tag
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Per message of the burst: how often it is in the Teams chat, which
    /// came back to Dave as errors, and how often Dave got each of Alice's.
    async fn count(&mut self, burst: &Burst) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        let contents = self.graph.chat_contents(&self.id).await;
        tokio::task::block_in_place(|| self.dave.drain(Duration::from_millis(300)));
        let seen = self.dave.seen();
        let teams = (0..TO_TEAMS)
            .map(|i| {
                contents
                    .iter()
                    .filter(|c| c.contains(&burst.to_teams(i)))
                    .count()
            })
            .collect();
        let bounced = (0..TO_TEAMS)
            .filter(|i| {
                seen.iter().any(|e| {
                    e["event"] == "message"
                        && e["id"] == burst.id(*i).as_str()
                        && e["error"].is_string()
                })
            })
            .collect();
        let answered = (0..TO_XMPP)
            .map(|i| {
                let text = burst.to_xmpp(i);
                seen.iter()
                    .filter(|e| {
                        e["event"] == "message"
                            && e["error"].is_null()
                            && e["body"].as_str().is_some_and(|b| b.contains(&text))
                    })
                    .count()
            })
            .collect();
        (teams, bounced, answered)
    }

    /// The burst's figures, for the log.
    pub fn report(&self, burst: &Burst) -> String {
        let Some(o) = self.outcomes.get(&burst.tag) else {
            return format!("{}: not run", burst.tag);
        };
        format!(
            "XMPP → Teams: {TO_TEAMS} sent, {} delivered exactly once, {} bounced to the sender, 0 lost, 0 twice \
             (all in {:.1} s); Teams → XMPP: {TO_XMPP} sent, {} delivered exactly once (all in {:.1} s)",
            o.delivered,
            o.bounced,
            o.to_teams_settled.as_secs_f64(),
            o.answered,
            o.to_xmpp_settled.as_secs_f64()
        )
    }
}

/// Waiting for a text from the blocking XMPP client inside the runtime.
trait WaitForText {
    fn wait_for_blocking(&mut self, within: Duration, text: &str);
}

impl WaitForText for XmppClient {
    fn wait_for_blocking(&mut self, within: Duration, text: &str) {
        tokio::task::block_in_place(|| {
            self.wait_for(within, |e| {
                e["event"] == "message" && e["body"].as_str().is_some_and(|b| b.contains(text))
            })
        })
        .unwrap_or_else(|e| panic!("waiting for {text:?}: {e:#}"));
    }
}
