//! A real ejabberd 23.01 on 127.0.0.1, started and stopped by a test.
//!
//! `ejabberdctl` insists on switching users, so the Erlang VM is started
//! directly: no epmd, distribution on loopback, all state in a temp dir.
//! ejabberd has no static s2s route; its resolver cache is seeded with the
//! SRV record `_xmpp-server._tcp.<gateway domain>` → localhost:<port>, and
//! `ERL_INETRC` keeps the system resolver out (order matters in that file:
//! `resolv_conf` before anything else, or it wipes later settings).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::prosody::{free_port, self_signed};

/// Where Debian puts ejabberd's applications.
const EJABBERD_LIBS: &str = "/usr/lib/x86_64-linux-gnu";

#[derive(Debug, Clone)]
pub struct EjabberdOptions {
    pub domain: String,
    /// The gateway's domain and s2s port, published as an SRV record.
    pub route: (String, u16),
    /// Offer STARTTLS on s2s with a self-signed certificate.
    pub tls: bool,
    pub s2s_port: Option<u16>,
}

pub struct Ejabberd {
    child: Child,
    dir: tempfile::TempDir,
    node: String,
    dist_port: u16,
    pub domain: String,
    pub c2s_port: u16,
    pub s2s_port: u16,
}

/// Whether ejabberd and Erlang are installed (tests skip, saying so, when not).
pub fn available() -> bool {
    let on_path = |bin: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(bin).is_file()))
    };
    on_path("erl")
        && std::fs::read_dir(EJABBERD_LIBS)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("ejabberd-"))
            })
            .unwrap_or(false)
}

impl Ejabberd {
    pub fn start(options: &EjabberdOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("db"))?;
        let c2s_port = free_port()?;
        let s2s_port = match options.s2s_port {
            Some(p) => p,
            None => free_port()?,
        };
        let dist_port = free_port()?;
        let (starttls, certfiles) = if options.tls {
            let (cert, key) = self_signed(root, &options.domain)?;
            let pem = root.join("ejabberd.pem");
            std::fs::write(&pem, [std::fs::read(&cert)?, std::fs::read(&key)?].concat())?;
            (
                "optional",
                format!("certfiles:\n  - \"{}\"\n", pem.display()),
            )
        } else {
            ("false", String::new())
        };
        let config = config(&options.domain, &certfiles, starttls, c2s_port, s2s_port);
        std::fs::write(root.join("ejabberd.yml"), config)?;
        std::fs::write(
            root.join("inetrc"),
            "{resolv_conf, \"\"}.\n{hosts_file, \"\"}.\n",
        )?;
        let (peer_domain, peer_port) = &options.route;
        let eval = format!(
            "ok = inet_db:add_rr(\"_xmpp-server._tcp.{peer_domain}\", in, srv, 2000000, {{0, 0, {peer_port}, \"localhost\"}}), \
             io:format(\"EJABBERD_READY~n\")."
        );
        let node = format!("xmppfed{dist_port}@localhost");
        let child = spawn_erl(root, &node, dist_port, &eval)?;
        let mut server = Self {
            child,
            dir,
            node,
            dist_port,
            domain: options.domain.clone(),
            c2s_port,
            s2s_port,
        };
        server.wait_ready(Duration::from_secs(60))?;
        Ok(server)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("ejabberd exited with {status}:\n{}", self.output());
            }
            if self.output().contains("EJABBERD_READY")
                && std::net::TcpStream::connect(("127.0.0.1", self.c2s_port)).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("ejabberd not ready within {timeout:?}:\n{}", self.output())
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("erl.out")).unwrap_or_default()
    }

    /// Registers a user through an Erlang control node (ejabberdctl needs its own user).
    pub fn register(&self, user: &str, password: &str) -> anyhow::Result<()> {
        let status = self.rpc(&format!(
            "ejabberd_auth, try_register, [<<\"{user}\">>, <<\"{}\">>, <<\"{password}\">>]",
            self.domain
        ))?;
        if status.trim() != "ok" {
            bail!("registering {user} failed: {status}");
        }
        Ok(())
    }

    fn rpc(&self, call: &str) -> anyhow::Result<String> {
        let output = Command::new("erl")
            .env("ERL_INETRC", self.dir.path().join("inetrc"))
            .env("HOME", self.dir.path())
            .args([
                "-sname",
                &format!("ctl{}@localhost", std::process::id()),
                "-setcookie",
                "xmppfedtest",
            ])
            .args([
                "-start_epmd",
                "false",
                "-erl_epmd_port",
                &self.dist_port.to_string(),
                "-dist_listen",
                "false",
            ])
            .args([
                "-kernel",
                "inet_dist_use_interface",
                "{127,0,0,1}",
                "-noshell",
            ])
            .args([
                "-eval",
                &format!(
                    "io:format(\"~p~n\", [rpc:call('{}', {call})]), halt().",
                    self.node
                ),
            ])
            .stdin(Stdio::null())
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// ejabberd's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ejabberd.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ejabberd.yml")
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ejabberd.yml: one host, c2s and s2s on loopback, dialback, STARTTLS as asked.
fn config(domain: &str, certfiles: &str, starttls: &str, c2s_port: u16, s2s_port: u16) -> String {
    format!(
        r#"hosts:
  - {domain}
loglevel: info
hide_sensitive_log_data: false
auth_method: internal
auth_password_format: plain
{certfiles}s2s_use_starttls: {starttls}
s2s_access: all
s2s_max_retry_delay: 1
outgoing_s2s_families: [ipv4]
listen:
  -
    port: {c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: false
    starttls_required: false
    max_stanza_size: 262144
  -
    port: {s2s_port}
    ip: "127.0.0.1"
    module: ejabberd_s2s_in
    max_stanza_size: 524288
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  s2s:
    allow: all
modules:
  mod_disco: {{}}
  mod_roster: {{}}
  mod_ping: {{}}
  mod_vcard: {{}}
  mod_s2s_dialback: {{}}
"#,
    )
}

/// Runs ejabberd in its own Erlang node: distribution on loopback at a port
/// of its own (no epmd), its files under `root`, output in `erl.out`.
fn spawn_erl(root: &Path, node: &str, dist_port: u16, eval: &str) -> anyhow::Result<Child> {
    let out = std::fs::File::create(root.join("erl.out"))?;
    Command::new("erl")
        .env("ERL_LIBS", EJABBERD_LIBS)
        .env("ERL_INETRC", root.join("inetrc"))
        .env("HOME", root)
        .env("ERL_CRASH_DUMP", root.join("erl_crash.dump"))
        .args(["-sname", node, "-setcookie", "xmppfedtest"])
        .args([
            "-start_epmd",
            "false",
            "-erl_epmd_port",
            &dist_port.to_string(),
        ])
        .args([
            "-kernel",
            "inet_dist_use_interface",
            "{127,0,0,1}",
            "-noshell",
            "-noinput",
        ])
        .args([
            "-mnesia",
            "dir",
            &format!("\"{}\"", root.join("db").display()),
        ])
        .args([
            "-ejabberd",
            "config",
            &format!("\"{}\"", root.join("ejabberd.yml").display()),
        ])
        .args([
            "log_path",
            &format!("\"{}\"", root.join("ejabberd.log").display()),
        ])
        .args(["-s", "ejabberd", "-eval", eval])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting erl (apt-get install ejabberd)")
}
