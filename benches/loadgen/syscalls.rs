//! System calls of the server processes, counted by `perf stat -e raw_syscalls:sys_enter`
//! over exactly the measured window.
//!
//! perf is started before the window with its counters disabled (`-D -1`) and a control
//! FIFO; writing `enable` and `disable` to the FIFO right after the CPU readings that open
//! and close the window makes both cover the same stretch of time. perf ends by itself
//! (`--timeout`), and is interrupted as soon as the window is closed.
//!
//! Counting enables the system-call tracepoint, which adds a few tens of nanoseconds of
//! kernel time to each system call of the counted processes.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};

const EVENT: &str = "raw_syscalls:sys_enter";
/// How long perf may take to exit once told to, or past its own timeout.
const EXIT_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Args)]
pub struct SyscallsArgs {
    /// The perf binary.
    #[arg(long, default_value = "perf")]
    pub perf: PathBuf,
    /// Processes to count (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub pid: Vec<u32>,
    /// Seconds to count.
    #[arg(long, default_value_t = 0.2)]
    pub seconds: f64,
}

/// A `perf stat` process attached to some processes, counters disabled until [`enable`].
///
/// [`enable`]: Counter::enable
pub struct Counter {
    child: Child,
    ctl: File,
    out: PathBuf,
    /// perf's stderr, line by line (its "Events enabled/disabled" notices and errors).
    lines: Receiver<String>,
    stderr: Vec<String>,
    ready: bool,
    enabled: bool,
    ends_at: Instant,
    _dir: tempfile::TempDir,
}

impl Counter {
    /// Starts perf, counting nothing yet; it exits by itself after `limit`.
    pub fn start(perf: &Path, pids: &[u32], limit: Duration) -> Result<Self, String> {
        if pids.is_empty() {
            return Err("no process to count".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
        let ctl_path = dir.path().join("ctl");
        let out = dir.path().join("out.csv");
        let made = Command::new("mkfifo")
            .arg(&ctl_path)
            .status()
            .map_err(|e| format!("mkfifo: {e}"))?;
        if !made.success() {
            return Err("mkfifo failed".into());
        }
        // Read and write: opening does not wait for perf, and writes never block.
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&ctl_path)
            .map_err(|e| format!("control FIFO: {e}"))?;
        let pid_list = pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut control = std::ffi::OsString::from("fifo:");
        control.push(&ctl_path);
        let mut child = Command::new(perf)
            .args(["stat", "-e", EVENT, "-x", ",", "-D", "-1", "--control"])
            .arg(control)
            .arg("-o")
            .arg(&out)
            .args(["-p", &pid_list, "--timeout"])
            .arg(limit.as_millis().max(10).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", perf.display()))?;
        let stderr = child.stderr.take().ok_or("perf's stderr")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Counter {
            child,
            ctl,
            out,
            lines,
            stderr: Vec::new(),
            ready: false,
            enabled: false,
            ends_at: Instant::now() + limit,
            _dir: dir,
        })
    }

    /// Takes in perf's messages, waiting up to `wait` for the next one; false once perf
    /// has closed its stderr (exited).
    fn take_lines(&mut self, wait: Duration) -> bool {
        let mut first = true;
        loop {
            let got = if first {
                self.lines.recv_timeout(wait)
            } else {
                self.lines.recv_timeout(Duration::ZERO)
            };
            first = false;
            match got {
                Ok(line) => {
                    if line.contains("Events disabled") {
                        self.ready = true;
                    }
                    self.stderr.push(line);
                }
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Whether perf has attached (it says "Events disabled" once its counters exist).
    /// Waits up to `wait`.
    pub fn ready(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while !self.ready {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.take_lines(left) || left.is_zero() {
                break;
            }
        }
        self.ready
    }

    pub fn enable(&mut self) {
        self.enabled = self.ctl.write_all(b"enable\n").is_ok();
    }

    pub fn disable(&mut self) {
        let _ = self.ctl.write_all(b"disable\n");
    }

    /// Ends perf and returns the count, or why there is none (perf failed, or had not
    /// attached when the window opened).
    pub fn finish(mut self) -> Result<u64, String> {
        if self.enabled {
            // Let perf act on `disable` before it is interrupted.
            let deadline = Instant::now() + Duration::from_millis(500);
            let seen = |s: &Self| {
                s.stderr
                    .iter()
                    .filter(|l| l.contains("Events disabled"))
                    .count()
            };
            while seen(&self) < 2 && Instant::now() < deadline {
                if !self.take_lines(Duration::from_millis(20)) {
                    break;
                }
            }
        }
        // SIGINT makes perf stat print its counts and exit; without it, perf ends at its
        // own timeout.
        let _ = Command::new("kill")
            .args(["-s", "INT", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = self.ends_at.max(Instant::now()) + EXIT_GRACE;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        self.take_lines(Duration::from_millis(50));
        let why = || {
            let msg: Vec<&str> = self
                .stderr
                .iter()
                .map(|l| l.trim())
                .filter(|l| !l.is_empty() && !l.starts_with("Events "))
                .take(3)
                .collect();
            if msg.is_empty() {
                String::new()
            } else {
                format!(": {}", msg.join(" "))
            }
        };
        match status {
            None => return Err("perf did not exit in time".into()),
            // perf stat re-raises the SIGINT above after printing its counts.
            Some(s) if !s.success() && s.signal() != Some(2) && s.code() != Some(130) => {
                return Err(format!("perf stat failed ({s}){}", why()));
            }
            Some(_) => {}
        }
        if !self.enabled {
            return Err(format!(
                "perf had not attached when the window opened{}",
                why()
            ));
        }
        let text = std::fs::read_to_string(&self.out)
            .map_err(|e| format!("perf's output: {e}{}", why()))?;
        parse(&text).ok_or_else(|| format!("no {EVENT} count in perf's output{}", why()))
    }
}

impl Drop for Counter {
    /// A counter given up on (its run failed) does not leave perf behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The count from `perf stat -x ,` output; `<not counted>` (the processes never ran while
/// counting) is 0.
fn parse(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| !l.starts_with('#') && l.contains(EVENT))?;
    let value = line.split(',').next()?.trim();
    if value == "<not counted>" {
        return Some(0);
    }
    value.parse().ok()
}

/// `loadgen syscalls`: counts for a short while; `compare.sh` runs it once to learn whether
/// perf works here for its processes.
pub fn run(a: SyscallsArgs) -> Result<Value, String> {
    let secs = a.seconds.clamp(0.01, 10.0);
    let window = Duration::from_secs_f64(secs);
    let mut c = Counter::start(&a.perf, &a.pid, window + Duration::from_secs(10))?;
    if c.ready(Duration::from_secs(5)) {
        c.enable();
        std::thread::sleep(window);
        c.disable();
    }
    let n = c.finish()?;
    Ok(json!({ "syscalls": n, "seconds": secs }))
}
