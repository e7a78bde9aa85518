//! A throw-away PostgreSQL server, started and stopped by a test, from
//! Debian's package (`apt-get install postgresql`: the highest
//! `/usr/lib/postgresql/*/bin/postgres`).
//!
//! Its cluster lives in a temporary directory: `initdb` with a generated
//! superuser password, SCRAM-SHA-256 over TCP on 127.0.0.1 (and an extra
//! address if asked), trust on its own Unix socket (in the directory, which
//! only its owner can enter) for the harness's `psql`, `fsync=off`, and TLS
//! with a certificate for `localhost` and 127.0.0.1 from a test CA if asked.
//! PostgreSQL refuses to run as root: as root (CI), the server runs as the
//! `postgres` user the Debian package creates; otherwise as ourselves.
//! Dropped, the server is stopped and the directory removed.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use xmppfed_config::{PostgresConfig, PostgresSslMode, SecretRef};

use crate::prosody::{TestCa, free_port};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const SUPERUSER: &str = "postgres";

/// How a test wants PostgreSQL set up.
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// Serve TLS (clients may still connect without it).
    pub tls: bool,
    /// Another address to listen on besides 127.0.0.1 (e.g. a node's bridge
    /// address, for pods); its clients are let in by password like loopback's.
    pub extra_address: Option<String>,
}

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The user the server runs as (uid, gid), when we are root.
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
    options: PostgresOptions,
    pub port: u16,
    /// The CA that signed the server's certificate (PEM), with `tls`.
    pub ca_file: Option<PathBuf>,
}

impl Postgres {
    /// Makes a cluster and starts it on a free port. A port found free can be
    /// taken by another test before the server binds it: then the start is
    /// tried again on another.
    pub fn start(options: &PostgresOptions) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let run_as = run_as()?;
        // Under /tmp when the server is another user: TMPDIR may be private to us.
        let dir = match run_as {
            Some(_) => tempfile::Builder::new()
                .prefix("xmppfed-pg-")
                .tempdir_in("/tmp")?,
            None => tempfile::Builder::new().prefix("xmppfed-pg-").tempdir()?,
        };
        let mut server = Self {
            dir,
            bin,
            run_as,
            child: None,
            options: options.clone(),
            port: 0,
            ca_file: None,
        };
        server.init()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = free_port()?;
            match server.start_server() {
                Ok(()) => return Ok(server),
                Err(e) if attempt < 4 && server.log().contains("could not bind") => {
                    eprintln!("postgres harness: port taken, trying another ({e:#})");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `initdb`, the password file, and the TLS files.
    fn init(&mut self) -> anyhow::Result<()> {
        let root = self.dir.path().to_owned();
        std::fs::create_dir(root.join("socket"))?;
        std::fs::write(root.join("password"), random_password()?)?;
        if self.options.tls {
            let tls = root.join("tls");
            std::fs::create_dir(&tls)?;
            let ca = TestCa::new(&tls)?;
            // The extra address too: pods check the name they connect to.
            let mut san = "DNS:localhost,IP:127.0.0.1".to_owned();
            if let Some(extra) = &self.options.extra_address {
                san.push_str(&format!(",IP:{extra}"));
            }
            let (cert, key) = ca.issue_for("localhost", &san)?;
            std::fs::rename(cert, tls.join("server.crt"))?;
            std::fs::rename(key, tls.join("server.key"))?;
            // PostgreSQL refuses a key others may read.
            std::fs::set_permissions(tls.join("server.key"), PermissionsExt::from_mode(0o600))?;
            self.ca_file = Some(ca.cert.clone());
        }
        self.give_to_server(&root)?;
        let major = self.major_version();
        let mut initdb = self.command("initdb");
        initdb
            .arg("--pgdata")
            .arg(root.join("data"))
            .args(["--username", SUPERUSER, "--encoding=UTF8", "--locale=C"])
            .arg(format!("--pwfile={}", root.join("password").display()))
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ]);
        if major >= 15 {
            // A linguistic default collation, so that a key compared by code
            // point is so because its column says `COLLATE "C"`.
            initdb.args(["--locale-provider=icu", "--icu-locale=en-US"]);
        }
        let output = initdb.output().context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Starts the server on `self.port` and waits until it answers.
    fn start_server(&mut self) -> anyhow::Result<()> {
        let root = self.dir.path();
        let mut listen = "127.0.0.1".to_owned();
        if let Some(extra) = &self.options.extra_address {
            listen.push(',');
            listen.push_str(extra);
            // pg_hba.conf's `host all all all scram-sha-256` line admits it.
            self.allow_everywhere()?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("postgres.log"))?;
        let mut postgres = self.command("postgres");
        postgres
            .arg("-D")
            .arg(root.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(root.join("socket"))
            .arg("-c")
            .arg(format!("listen_addresses={listen}"));
        // fsync off: a test's server need not survive the machine's crash,
        // only its own (SIGKILL): commits still reach the kernel before they
        // are acknowledged (synchronous_commit stays on).
        for setting in [
            "fsync=off",
            "full_page_writes=off",
            "max_connections=200",
            "shared_buffers=32MB",
            "log_min_messages=warning",
        ] {
            postgres.arg("-c").arg(setting);
        }
        if self.options.tls {
            let tls = root.join("tls");
            postgres.args(["-c", "ssl=on"]);
            postgres.arg("-c").arg(format!(
                "ssl_cert_file={}",
                tls.join("server.crt").display()
            ));
            postgres
                .arg("-c")
                .arg(format!("ssl_key_file={}", tls.join("server.key").display()));
        }
        let child = postgres
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // A group of its own: a test's Ctrl-C does not reach it first.
            .process_group(0)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("postgres exited with {status}; log:\n{}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.psql("postgres", "SELECT 1").is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "postgres did not answer within {READY_TIMEOUT:?}; log:\n{}",
            self.log()
        )
    }

    /// A fresh database `name` (letters, digits, `_`), and how the gateway
    /// reaches it: the superuser over TCP on 127.0.0.1, verify-full against
    /// the test CA when the server has TLS.
    pub fn create_database(&self, name: &str) -> anyhow::Result<PostgresConfig> {
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "database name {name:?}: lower-case letters, digits and _ only"
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(PostgresConfig {
            host: "127.0.0.1".to_owned(),
            port: self.port,
            database: name.to_owned(),
            user: SUPERUSER.to_owned(),
            password: SecretRef::File(self.password_file()),
            sslmode: if self.options.tls {
                PostgresSslMode::VerifyFull
            } else {
                PostgresSslMode::Disable
            },
            ca_file: self.ca_file.clone(),
            pool_size: 8,
        })
    }

    /// Runs SQL in `database` as the superuser (over the Unix socket) and
    /// returns what it printed, unaligned, tuples only.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let output = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path().join("socket"))
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !output.status.success() {
            bail!(
                "psql {sql:?} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// The superuser's password, in the file `password_file` names.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// Stops the server (fast shutdown: sessions are ended, transactions
    /// rolled back, everything committed kept).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal("-INT", child.id())?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("postgres did not stop within {STOP_TIMEOUT:?}; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server and its sessions at once (SIGKILL), as a crash would;
    /// `restart` recovers the cluster from its WAL.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // Sessions are processes of their own (each its own process group).
        let sessions = children_of(child.id());
        signal("-KILL", child.id())?;
        child.wait()?;
        for pid in &sessions {
            let _ = signal("-KILL", *pid);
        }
        // The shared memory is free once every session is gone.
        let deadline = Instant::now() + STOP_TIMEOUT;
        while sessions.iter().any(|pid| alive(*pid)) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "postgres sessions outlived the kill"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the server (if it runs) and starts it again on the same
    /// cluster and port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.start_server()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command of the server's package, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Hands the directory to the server's user (when it is not us).
    fn give_to_server(&self, root: &Path) -> anyhow::Result<()> {
        let Some((uid, gid)) = self.run_as else {
            return Ok(());
        };
        let mut paths = vec![root.to_owned(), root.join("socket"), root.join("password")];
        if self.options.tls {
            let tls = root.join("tls");
            paths.extend([tls.join("server.crt"), tls.join("server.key"), tls]);
        }
        for path in paths {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    /// pg_hba.conf admits password logins from any address (for `extra_address`).
    fn allow_everywhere(&self) -> anyhow::Result<()> {
        let hba = self.dir.path().join("data/pg_hba.conf");
        let line = "host all all all scram-sha-256\n";
        let current = std::fs::read_to_string(&hba)?;
        if !current.contains(line) {
            std::fs::write(&hba, current + line)?;
        }
        Ok(())
    }

    /// The major version, from the binary's directory (`…/15/bin`).
    fn major_version(&self) -> u32 {
        self.bin
            .parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.stop().is_err() {
            let _ = self.kill();
        }
    }
}

/// `/usr/lib/postgresql/<highest>/bin`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no PostgreSQL server in {}/*/bin: apt-get install postgresql",
            root.display()
        ),
    }
}

/// As root: the `postgres` user's uid and gid (PostgreSQL refuses root).
fn run_as() -> anyhow::Result<Option<(u32, u32)>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse::<u32>().ok())
        .context("no effective uid in /proc/self/status")?;
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let ids = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    });
    match ids {
        Some(ids) => Ok(Some(ids)),
        None => bail!(
            "running as root, and there is no `postgres` user to run PostgreSQL as \
             (apt-get install postgresql creates it)"
        ),
    }
}

fn random_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 18];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn signal(signal: &str, pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| stat(*child).is_some_and(|(_, parent)| parent == pid))
        .collect()
}

/// Whether `pid` still runs (a zombie has let go of everything).
fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// A process's state and parent, from /proc/PID/stat.
fn stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: read after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}
