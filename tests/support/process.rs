//! The real `certgate run` binary as a child process: started on a test's config, its
//! addresses read from the log line that says it listens, its stderr kept.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Prepared, STEP};

/// A `certgate run` child and the addresses it printed.
pub struct Running {
    pub child: Child,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub admin: SocketAddr,
    /// Every stderr line so far (a thread keeps reading).
    pub log: Arc<Mutex<String>>,
}

impl Running {
    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "certgate did not exit within {limit:?}; its log:\n{}",
                    self.log.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address `key` names in a log line: `key=addr` in text (ANSI colours removed), or
/// a JSON field.
fn field(line: &str, key: &str) -> Option<SocketAddr> {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&plain) {
        return v[key].as_str().and_then(|a| a.parse().ok());
    }
    plain
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim_matches('"').parse().ok())
}

/// Spawns `certgate --config <p> run` (with `CERTGATE_LOG=info`) and waits until it listens.
pub fn start(p: &Prepared) -> Running {
    start_with_log(p, Some("info"))
}

/// [`start`] with `CERTGATE_LOG` set to `log`, or unset (the config's `log.level` rules).
pub fn start_with_log(p: &Prepared, log: Option<&str>) -> Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_certgate"));
    cmd.arg("--config")
        .arg(&p.config_path)
        .arg("run")
        .env_remove("CERTGATE_CONFIG")
        .env_remove("CERTGATE_LOG");
    if let Some(level) = log {
        cmd.env("CERTGATE_LOG", level);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn certgate run");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("certgate listening")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send((
                    field(&line, "listen"),
                    field(&line, "metrics"),
                    field(&line, "admin"),
                ));
            }
            let mut l = log2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    match rx.recv_timeout(STEP) {
        Ok((Some(listen), Some(metrics), Some(admin))) => Running {
            child,
            listen,
            metrics,
            admin,
            log,
        },
        other => {
            let _ = child.kill();
            panic!(
                "certgate run did not report its addresses ({other:?}); log:\n{}",
                log.lock().unwrap()
            );
        }
    }
}
