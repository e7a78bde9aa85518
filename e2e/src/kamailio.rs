//! Kamailio (Debian's `kamailio` and `kamailio-tls-modules`) as an
//! independent SIP peer on 127.0.0.1, started by a test: SIP over mutual TLS
//! (certificates from the test's CA, required and verified both ways). It
//! answers OPTIONS for itself, and relays every other request to the
//! gateway's edge over a TLS connection of its own, so one request proves
//! both directions: Kamailio accepts our TLS SIP, and we accept its.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::prosody::{TestCa, free_port};

const BINARY: &str = "/usr/sbin/kamailio";
const MODULES: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules";
/// The name Kamailio is certified for (and connected to, for SNI).
pub const NAME: &str = "kamailio.test";
/// What Kamailio puts in its Via: its address (an advertised name would have
/// to resolve), which its certificate names too.
pub const VIA_HOST: &str = "127.0.0.1";

/// Whether Kamailio and its TLS module are installed.
pub fn available() -> bool {
    Path::new(BINARY).is_file() && Path::new(MODULES).join("tls.so").is_file()
}

pub struct Kamailio {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Kamailio {
    /// Starts Kamailio in `dir` on a free TLS port, relaying to the edge at
    /// `127.0.0.1:edge_port`; its certificate for [`NAME`] comes from `ca`.
    pub fn start(dir: &Path, ca: &TestCa, edge_port: u16) -> anyhow::Result<Self> {
        let (cert, key) = ca.issue_for(NAME, &format!("DNS:{NAME},IP:{VIA_HOST}"))?;
        let port = free_port()?;
        let profile = |kind: &str| {
            format!(
                "[{kind}:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\n\
                 private_key = {}\ncertificate = {}\nca_list = {}\n\n",
                key.display(),
                cert.display(),
                ca.cert.display()
            )
        };
        let tls_cfg = dir.join("kamailio-tls.cfg");
        std::fs::write(&tls_cfg, profile("server") + &profile("client"))?;
        let cfg = dir.join("kamailio.cfg");
        std::fs::write(&cfg, config(port, edge_port, &tls_cfg))?;
        let log = dir.join("kamailio.log");
        let run = dir.join("kamailio-run");
        std::fs::create_dir_all(&run)?;
        let child = Command::new(BINARY)
            .args(["-DD", "-E", "-f"])
            .arg(&cfg)
            .arg("-P")
            .arg(dir.join("kamailio.pid"))
            .arg("-Y")
            .arg(&run)
            .arg("-w")
            .arg(dir)
            .args(["-m", "32", "-M", "8"])
            // Its own process group: Kamailio forks workers, and a stop
            // signals them all.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting kamailio")?;
        let mut kamailio = Self { child, port, log };
        kamailio.wait_listening()?;
        Ok(kamailio)
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("kamailio exited ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("kamailio did not listen within 20 s:\n{}", self.log())
    }

    /// What Kamailio logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM to the group: the main process stops its workers; then
        // whatever is left is killed.
        let group = format!("-{}", self.child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("-KILL");
        let _ = self.child.wait();
    }
}

/// A proxy that answers OPTIONS for itself and relays everything else to
/// the edge, over TLS only (the stock configuration's OPTIONS answer and the
/// tls module README's "accept TLS only" check).
fn config(port: u16, edge_port: u16, tls_cfg: &Path) -> String {
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
auto_aliases=no
dns=no
rev_dns=no
enable_tls=yes
listen=tls:{VIA_HOST}:{port}
alias="{NAME}"
mpath="{MODULES}/"
loadmodule "tls.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
modparam("tls", "config", "{tls}")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (proto != TLS) {{ sl_send_reply("403", "Accepting TLS Only"); exit; }}
    xlog("L_INFO", "request $rm $ru from $si:$sp\n");
    if (is_method("OPTIONS") && uri==myself && $rU==$null) {{
        sl_send_reply("200", "Keepalive"); exit;
    }}
    if (is_method("ACK")) {{ if (t_check_trans()) t_relay(); exit; }}
    $du = "sip:127.0.0.1:{edge_port};transport=tls";
    if (!t_relay()) {{ sl_reply_error(); }}
    exit;
}}
"#,
        tls = tls_cfg.display()
    )
}
