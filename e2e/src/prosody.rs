//! A real Prosody server on 127.0.0.1, started and stopped by a test.
//!
//! Its s2s traffic for the gateway's domain goes to the gateway's loopback
//! port through `mod_xmppfed_route` (Prosody 0.12 cannot route one domain to
//! a fixed host:port on its own).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How a test wants Prosody set up.
#[derive(Debug, Clone)]
pub struct ProsodyOptions {
    /// The XMPP domain Prosody serves.
    pub domain: String,
    /// Domains routed to a loopback port (the gateway's s2s listener).
    pub routes: Vec<(String, u16)>,
    /// Domains routed to another host's port (a gateway behind a Service).
    pub host_routes: Vec<(String, String, u16)>,
    /// Addresses Prosody listens on (c2s and s2s); loopback by default.
    pub interfaces: Vec<String>,
    /// Serve TLS with a self-signed certificate for `domain`.
    pub tls: bool,
    /// Load XEP-0288 bidirectional s2s.
    pub bidi: bool,
    /// A fixed s2s port (when the other side must know it first); free otherwise.
    pub s2s_port: Option<u16>,
    /// Certificates from this CA: Prosody's own, and the roots it trusts.
    /// With it, Prosody requires certificate authentication (s2s_secure_auth).
    pub ca: Option<std::sync::Arc<TestCa>>,
}

impl ProsodyOptions {
    pub fn new(domain: &str) -> Self {
        Self {
            domain: domain.to_owned(),
            routes: Vec::new(),
            host_routes: Vec::new(),
            interfaces: vec!["127.0.0.1".to_owned()],
            tls: false,
            bidi: true,
            s2s_port: None,
            ca: None,
        }
    }
}

pub struct Prosody {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    pub domain: String,
    pub c2s_port: u16,
    pub s2s_port: u16,
}

/// A loopback port nobody listens on right now, for a server a test starts
/// later. It is drawn from below the kernel's ephemeral range (and below
/// Kubernetes' NodePort range), because a port the kernel handed out here
/// could be taken by any outgoing connection of the tests before the server
/// binds it, as CI saw. A process never hands the same port out twice.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let (low, high) = (20_000, ephemeral_low().min(30_000));
    let mut given = GIVEN
        .lock()
        .map_err(|_| anyhow::anyhow!("free_port poisoned"))?;
    for _ in 0..500 {
        let mut random = [0u8; 2];
        getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
        let port = low + u16::from_le_bytes(random) % (high - low);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port in {low}..{high}")
}

/// A port the kernel finds free, as `free_port` did before it drew from its
/// own range: for the node tests' Prosody, which the node's pods reach on
/// the host. With a port from `free_port`'s range, that Prosody's
/// connections to the gateway timed out after the gateway pod was killed
/// (the DomainWhitelist step bounced its burst, in 2 runs of 2; the
/// kernel's pick delivered it), for a reason not yet found.
pub fn kernel_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The first port of the kernel's ephemeral range (32768 when unknown).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .filter(|low| *low > 21_000)
        .unwrap_or(32_768)
}

/// Whether a Prosody binary is installed (tests skip, saying so, when not).
pub fn available() -> bool {
    // Not `prosody --version`: Prosody 0.12 takes no such flag and starts a server.
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("prosody").is_file()))
}

/// A test certificate authority (openssl), issuing certificates for domains.
#[derive(Debug)]
pub struct TestCa {
    pub cert: PathBuf,
    key: PathBuf,
    dir: PathBuf,
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running openssl")?;
    if !output.status.success() {
        bail!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl TestCa {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let extensions = [
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        make_self_signed(&cert, &key, EC_P256, "/CN=xmppfed test CA", &extensions)?;
        Ok(Self {
            cert,
            key,
            dir: dir.to_owned(),
        })
    }

    /// A certificate for `domain` (server and client use), and its key.
    pub fn issue(&self, domain: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        self.issue_for(domain, &format!("DNS:{domain}"))
    }

    /// A certificate named `domain` for the subjectAltName `san` (`DNS:…`,
    /// `IP:…`), and its key.
    pub fn issue_for(&self, domain: &str, san: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = self.dir.join(format!("{domain}.key"));
        let csr = self.dir.join(format!("{domain}.csr"));
        let cert = self.dir.join(format!("{domain}.crt"));
        let ext = self.dir.join(format!("{domain}.ext"));
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )?;
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key.to_string_lossy(),
            "-out",
            &csr.to_string_lossy(),
            "-subj",
            &format!("/CN={domain}"),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr.to_string_lossy(),
            "-CA",
            &self.cert.to_string_lossy(),
            "-CAkey",
            &self.key.to_string_lossy(),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &cert.to_string_lossy(),
            "-extfile",
            &ext.to_string_lossy(),
        ])?;
        Ok((cert, key))
    }
}

/// A self-signed RSA certificate and key (PEM), e.g. an app registration's
/// client-assertion certificate.
pub fn rsa_self_signed(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    make_self_signed(
        &cert,
        &key,
        &["-newkey", "rsa:2048"],
        &format!("/CN={name}"),
        &[],
    )?;
    Ok((cert, key))
}

/// A self-signed certificate and key (PEM) for `domain`, made with openssl.
pub fn self_signed(dir: &Path, domain: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (
        dir.join(format!("{domain}.crt")),
        dir.join(format!("{domain}.key")),
    );
    let san = format!("subjectAltName=DNS:{domain}");
    make_self_signed(
        &cert,
        &key,
        EC_P256,
        &format!("/CN={domain}"),
        &["-addext", &san],
    )?;
    Ok((cert, key))
}

const EC_P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// `openssl req -x509`: a self-signed certificate valid two days, and its key.
fn make_self_signed(
    cert: &Path,
    key: &Path,
    newkey: &[&str],
    subject: &str,
    extensions: &[&str],
) -> anyhow::Result<()> {
    let (key, cert) = (key.to_string_lossy(), cert.to_string_lossy());
    let mut args = vec!["req", "-x509"];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&[
        "-nodes", "-days", "2", "-keyout", &key, "-out", &cert, "-subj", subject,
    ]);
    args.extend_from_slice(extensions);
    openssl(&args)
}

impl Prosody {
    /// Starts Prosody on fresh loopback ports. A port found free can be taken
    /// by another test before Prosody binds it; Prosody then logs "Failed to
    /// open server port" and serves without it, so the start is tried again
    /// on new ports (the caller's own `s2s_port` is kept).
    pub fn start(options: &ProsodyOptions) -> anyhow::Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let prosody = Self::start_once(options)?;
            let log = prosody.log();
            if !log.contains("Failed to open server port") {
                return Ok(prosody);
            }
            if attempt >= 4 {
                bail!("prosody could not bind its ports after {attempt} attempts; log:\n{log}");
            }
            drop(prosody);
        }
    }

    fn start_once(options: &ProsodyOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("data"))?;
        std::fs::create_dir_all(root.join("plugins"))?;
        std::fs::write(
            root.join("plugins/mod_xmppfed_route.lua"),
            include_str!("../prosody/mod_xmppfed_route.lua"),
        )?;
        let c2s_port = free_port()?;
        let s2s_port = match options.s2s_port {
            Some(port) => port,
            None => free_port()?,
        };
        let config = config(options, root, c2s_port, s2s_port)?;
        let config_path = root.join("prosody.cfg.lua");
        std::fs::write(&config_path, config)?;
        let child = Command::new("prosody")
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prosody (apt-get install prosody)")?;
        let mut prosody = Self {
            child,
            dir,
            config: config_path,
            domain: options.domain.clone(),
            c2s_port,
            s2s_port,
        };
        prosody.wait_listening(Duration::from_secs(20))?;
        Ok(prosody)
    }

    fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("prosody exited with {status}; log:\n{}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.c2s_port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.s2s_port)).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "prosody did not listen within {timeout:?}; log:\n{}",
            self.log()
        )
    }

    /// Registers `user` with `password` (offline, through prosodyctl).
    pub fn register(&self, user: &str, password: &str) -> anyhow::Result<()> {
        let status = Command::new("prosodyctl")
            .arg("--config")
            .arg(&self.config)
            .args(["register", user, &self.domain, password])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("prosodyctl register {user} failed");
        }
        Ok(())
    }

    /// Prosody's debug log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prosody.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python interpreter that has slixmpp (scripts/test.sh sets it).
pub fn python() -> Option<PathBuf> {
    let path = std::env::var_os("XMPPFED_TEST_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/python");
            venv.exists().then_some(venv)
        })?;
    let ok = Command::new(&path)
        .args(["-c", "import slixmpp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(path)
}

/// Runs the slixmpp client (e2e/clients/s2s_client.py) as `jid` on a server's
/// c2s port against `peer`, and returns what it printed.
pub fn run_client(
    python: &Path,
    jid: &str,
    password: &str,
    c2s_port: u16,
    peer: &str,
    steps: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/s2s_client.py");
    let output = Command::new(python)
        .arg(script)
        .args([jid, password, "127.0.0.1", &c2s_port.to_string(), peer])
        .arg(serde_json::to_string(steps)?)
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| {
        format!(
            "client printed no result (exit {}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// prosody.cfg.lua: one host, c2s and s2s on the given ports, static routes
/// through our module, TLS as asked (a CA makes certificates authenticate and
/// dialback refused), bidi and stream management on.
fn config(
    options: &ProsodyOptions,
    root: &Path,
    c2s_port: u16,
    s2s_port: u16,
) -> anyhow::Result<String> {
    let routes: String = options
        .routes
        .iter()
        .map(|(domain, port)| (domain.as_str(), "127.0.0.1", *port))
        .chain(
            options
                .host_routes
                .iter()
                .map(|(domain, host, port)| (domain.as_str(), host.as_str(), *port)),
        )
        .map(|(domain, host, port)| format!("[\"{domain}\"] = {{ \"{host}\", {port} }}; "))
        .collect();
    let interfaces: String = options
        .interfaces
        .iter()
        .map(|i| format!("\"{i}\"; "))
        .collect();
    let ssl = match (&options.ca, options.tls) {
        (Some(ca), _) => {
            let (cert, key) = ca.issue(&options.domain)?;
            format!(
                "ssl = {{ certificate = \"{}\"; key = \"{}\"; cafile = \"{}\"; }}",
                cert.display(),
                key.display(),
                ca.cert.display()
            )
        }
        (None, true) => {
            let (cert, key) = self_signed(root, &options.domain)?;
            format!(
                "ssl = {{ certificate = \"{}\"; key = \"{}\"; }}",
                cert.display(),
                key.display()
            )
        }
        (None, false) => String::new(),
    };
    // Certificates authenticate (and dialback is refused) only with a CA.
    let (secure, disabled) = if options.ca.is_some() {
        ("true", "")
    } else {
        ("false", "\"s2s_auth_certs\";")
    };
    let bidi = if options.bidi { "\"s2s_bidi\";" } else { "" };
    Ok(format!(
        r#"
run_as_root = true
pidfile = "{root}/prosody.pid"
data_path = "{root}/data"
plugin_paths = {{ "{root}/plugins" }}
log = {{ debug = "{root}/prosody.log" }}
interfaces = {{ {interfaces} }}
c2s_ports = {{ {c2s_port} }}
s2s_ports = {{ {s2s_port} }}
c2s_direct_tls_ports = {{}}
s2s_direct_tls_ports = {{}}
http_ports = {{}}
https_ports = {{}}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "presence"; "vcard4"; "vcard_legacy"; "pep"; "smacks"; "xmppfed_route"; {bidi} }}
modules_disabled = {{ "offline"; {disabled} }}
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
s2s_secure_auth = {secure}
s2s_require_encryption = {secure}
xmppfed_routes = {{ {routes} }}
-- XEP-0198 on s2s: stanzas the gateway never acknowledged are sent again on
-- a new stream rather than bounced (the gateway acknowledges only what it
-- has stored).
smacks_s2s_resend = true
{ssl}
VirtualHost "{domain}"
"#,
        root = root.display(),
        domain = options.domain,
    ))
}
