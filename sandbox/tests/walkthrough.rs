//! README's walkthrough, as a user would follow it: the sandbox running, a
//! local Prosody routed to it, a client that adds alice@teams.localhost and
//! writes to her, and the sandbox's CLI answering as Alice. Skips, saying so,
//! when Prosody or the Python client is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure with its reason

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use xmppfed_e2e::daemon::Daemon;
use xmppfed_e2e::prosody::{self, Prosody, ProsodyOptions};
use xmppfed_e2e::xmpp_client::XmppClient;

const BIN: &str = env!("CARGO_BIN_EXE_xmppfed-sandbox");

fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "xmppfed-sandbox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_readme_walkthrough_works() {
    if !prosody::available() {
        eprintln!("skipped: prosody is not installed");
        return;
    }
    let Some(python) = prosody::python() else {
        eprintln!("skipped: no Python with slixmpp (run scripts/test.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prosody_s2s = prosody::free_port().unwrap();
    let mut command = Command::new(BIN);
    command
        .arg("run")
        .arg("--dir")
        .arg(dir.path())
        .args(["--peer-port", &prosody_s2s.to_string()]);
    let mut sandbox = Daemon::spawn(command).unwrap();
    sandbox
        .wait_for_log("Teams directory refreshed", Duration::from_secs(60))
        .unwrap();

    // Prosody as the banner says: routed to the sandbox's s2s port.
    let server = Prosody::start(&ProsodyOptions {
        routes: vec![("teams.localhost".into(), 5270)],
        s2s_port: Some(prosody_s2s),
        ..ProsodyOptions::new("localhost")
    })
    .unwrap();
    server.register("you", "yourpw").unwrap();
    let mut you = XmppClient::connect(&python, "you@localhost", "yourpw", server.c2s_port).unwrap();
    let wait = |c: &mut XmppClient, what: &dyn Fn(&serde_json::Value) -> bool| {
        c.wait_for(Duration::from_secs(30), what)
            .unwrap_or_else(|e| panic!("{e:#}"))
    };

    you.command(json!({"cmd": "subscribe", "to": "alice@teams.localhost"}))
        .unwrap();
    wait(&mut you, &|e| {
        e["event"] == "presence"
            && e["type"] == "subscribed"
            && e["from"] == "alice@teams.localhost"
    });
    you.command(
        json!({"cmd": "message", "to": "alice@teams.localhost", "body": "Hello Alice", "id": "w1"}),
    )
    .unwrap();
    wait(&mut you, &|e| e["received"] == "w1");
    assert!(cli(&["messages", "alice"]).contains("Hello Alice"));

    let said = cli(&["say", "alice", "you@localhost", "Hello from Teams"]);
    assert!(said.contains("sent"), "{said}");
    let got = wait(&mut you, &|e| {
        e["event"] == "message" && e["body"] == "Hello from Teams"
    });
    assert_eq!(got["from"], "alice@teams.localhost/teams");

    // Carol has never had a chat with you: she starts one, as in Teams.
    let said = cli(&["say", "carol", "you@localhost", "Carol here, first time"]);
    assert!(said.contains("sent"), "{said}");
    let got = wait(&mut you, &|e| {
        e["event"] == "message" && e["body"] == "Carol here, first time"
    });
    assert_eq!(got["from"], "carol@teams.localhost/teams");

    cli(&["presence", "alice", "Busy", "InAMeeting"]);
    wait(&mut you, &|e| {
        e["event"] == "presence" && e["from"] == "alice@teams.localhost/teams" && e["show"] == "dnd"
    });
    let users = cli(&["users"]);
    assert!(
        users.contains("alice@teams.localhost") && users.contains("not federated"),
        "{users}"
    );
    // The client goes away: its shadow account follows.
    you.command(json!({"cmd": "presence", "show": "away", "status": "lunch"}))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let users = cli(&["users"]);
        if users
            .lines()
            .any(|l| l.contains("shadow account") && l.contains("Away/Away"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{users}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(you);
    sandbox.terminate(Duration::from_secs(10)).unwrap();
}
