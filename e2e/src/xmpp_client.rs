//! A long-lived slixmpp client on a real server (e2e/clients/interactive_client.py),
//! driven line by line: the test sends JSON commands and waits for the JSON
//! events the client prints.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub struct XmppClient {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::Receiver<Value>,
    /// Every event seen so far (waits look through those not yet taken).
    pub seen: Vec<Value>,
    taken: std::collections::HashSet<usize>,
}

impl XmppClient {
    /// Logs `jid` in on a server's plain c2s port and waits until it is online.
    pub fn connect(
        python: &Path,
        jid: &str,
        password: &str,
        c2s_port: u16,
    ) -> anyhow::Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/interactive_client.py");
        let mut child = Command::new(python)
            .arg(script)
            .args([jid, password, "127.0.0.1", &c2s_port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the XMPP client")?;
        let stdin = child.stdin.take().context("client stdin")?;
        let stdout = child.stdout.take().context("client stdout")?;
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && tx.send(event).is_err()
                {
                    break;
                }
            }
        });
        let mut client = Self {
            child,
            stdin,
            events,
            seen: Vec::new(),
            taken: std::collections::HashSet::new(),
        };
        client.wait_for(Duration::from_secs(20), |e| e["event"] == "online")?;
        Ok(client)
    }

    pub fn command(&mut self, cmd: Value) -> anyhow::Result<()> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The first event not yet taken by an earlier wait that matches, waiting
    /// up to `timeout`; events that did not match stay available to later waits.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut index = 0;
        loop {
            while index < self.seen.len() {
                if !self.taken.contains(&index) && matches(&self.seen[index]) {
                    self.taken.insert(index);
                    return Ok(self.seen[index].clone());
                }
                index += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    if event["event"] == "error" && !matches(&event) {
                        eprintln!("the XMPP client reports an error: {event}");
                    }
                    self.seen.push(event);
                }
                Err(_) => bail!(
                    "no matching event within {timeout:?}; seen: {}",
                    serde_json::to_string_pretty(
                        &self
                            .seen
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !self.taken.contains(i))
                            .map(|(_, e)| e)
                            .collect::<Vec<_>>()
                    )
                    .unwrap_or_default()
                ),
            }
        }
    }

    /// Presence stanzas received so far (for assertions that something did *not* arrive).
    pub fn presences_from(&self, bare: &str) -> Vec<Value> {
        self.seen
            .iter()
            .filter(|e| {
                e["event"] == "presence"
                    && e["from"]
                        .as_str()
                        .is_some_and(|f| f.split('/').next() == Some(bare))
            })
            .cloned()
            .collect()
    }

    /// Every event received so far, taken by a wait or not.
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// Collects what arrives for `period` (nothing is waited for).
    pub fn drain(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while let Ok(event) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(event);
        }
    }
}

impl Drop for XmppClient {
    fn drop(&mut self) {
        let _ = self.command(json!({"cmd": "quit"}));
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
