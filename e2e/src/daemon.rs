//! Runs one of the project's binaries as a test would meet it in production:
//! a child process with JSON logs on stdout, stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Daemon {
    /// Starts `command` with JSON logs captured from stdout (stderr is inherited).
    pub fn spawn(mut command: Command) -> anyhow::Result<Self> {
        command
            .env("XMPPFED_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = command.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("child has no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a JSON log event whose `message` equals `message`.
    pub fn wait_for_log(
        &mut self,
        message: &str,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| {
                anyhow::anyhow!(
                    "no log event {message:?} within {timeout:?}; output so far:\n{}",
                    self.seen.join("\n")
                )
            })?;
            self.seen.push(line.clone());
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                && event["message"] == message
            {
                return Ok(event);
            }
        }
    }

    /// Whether the process is still running (a crash shows here at once).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Every log line so far, without waiting for more.
    pub fn lines_so_far(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
