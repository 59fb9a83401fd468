//! Real `redis-server` processes for the tests: standalone servers, replicas and sentinels
//! (`redis-server --sentinel`), each on a free loopback port in its own temporary folder,
//! killed when dropped.
//!
//! The machine may run its own Redis (port 6379): nothing here uses or depends on it. Where
//! `redis-server` is not installed the tests that need it are skipped with a loud message,
//! except under `CI=true`, where a missing server is a failure (`.ci/run` installs it).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bound on a server becoming ready (or any other wait in this file).
const READY: Duration = Duration::from_secs(15);

/// True when `redis-server` can be run. Prints why not, loudly; panics under `CI=true`.
pub fn available() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("redis-server is not installed, and CI=true: install it (.ci/run does)");
        }
        eprintln!(
            "\n**********************************************************************\n\
             SKIPPED: redis-server is not installed, so this Redis test did not run.\n\
             Install it (Debian: apt-get install redis-server) or run .ci/run.\n\
             **********************************************************************\n"
        );
    }
    ok
}

/// A free port on 127.0.0.1 (bound, then released; the caller retries on a collision).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// How a server is run.
#[derive(Clone, Debug, Default)]
pub struct ServerSpec {
    /// AOF with fsync on every write: a restart keeps the data.
    pub persistent: bool,
    /// `--replicaof 127.0.0.1 <port>`.
    pub replica_of: Option<u16>,
    /// Extra `--name value` arguments.
    pub extra: Vec<String>,
}

/// One `redis-server` process. Killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    spec: ServerSpec,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A throwaway server (no persistence). `None` when redis-server is missing (skip).
    pub fn start() -> Option<RedisServer> {
        Self::start_with(ServerSpec::default())
    }

    pub fn start_with(spec: ServerSpec) -> Option<RedisServer> {
        if !available() {
            return None;
        }
        let mut dir = tempfile::Builder::new()
            .prefix("certgate-redis-")
            .tempdir()
            .expect("temp dir");
        for _ in 0..10 {
            let port = free_port();
            let mut s = RedisServer {
                child: None,
                port,
                spec: spec.clone(),
                dir,
            };
            if s.launch() {
                return Some(s);
            }
            dir = s.take_dir();
        }
        panic!("redis-server did not start on any of 10 free ports");
    }

    fn take_dir(self) -> tempfile::TempDir {
        let mut me = self;
        if let Some(mut c) = me.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let empty = tempfile::Builder::new()
            .prefix("certgate-redis-")
            .tempdir()
            .expect("temp dir");
        std::mem::replace(&mut me.dir, empty)
    }

    /// Starts the process on `self.port`; false when it exited (port taken).
    fn launch(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--daemonize", "no", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"));
        if self.spec.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(master) = self.spec.replica_of {
            cmd.args(["--replicaof", "127.0.0.1"])
                .arg(master.to_string());
        }
        cmd.args(&self.spec.extra);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn redis-server");
        self.child = Some(child);
        wait_for_ping(self.port, self.child.as_mut().expect("child"))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// A plain (synchronous) connection for test assertions and setup.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("client")
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test redis")
    }

    /// Runs one command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.client())
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again on the same port and folder (an AOF, if persistent, is
    /// loaded; otherwise the server comes back empty).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY;
        while !self.launch() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not come back on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `INFO commandstats` as (command, calls), e.g. ("hgetall", 12).
    pub fn command_calls(&self) -> Vec<(String, u64)> {
        let info: String = self.cmd(&["INFO", "commandstats"]);
        info.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                let calls = stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_string(), calls))
            })
            .collect()
    }

    /// Total commands executed so far (all kinds).
    pub fn total_calls(&self) -> u64 {
        self.command_calls().iter().map(|(_, n)| n).sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for_ping(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + READY;
    let url = format!("redis://127.0.0.1:{port}/");
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return false; // exited: the port was taken, or the config was refused
        }
        let pong = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        match pong {
            Ok(p) if p == "PONG" => return true,
            // LOADING (AOF replay) and connection refused both mean: not yet.
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on port {port} did not answer PING within {READY:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server --sentinel` watching one master. Killed on drop.
pub struct Sentinel {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Sentinel {
    /// Watches `master_port` as `name`, quorum 1, fast failure detection.
    pub fn start(name: &str, master_port: u16) -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix("certgate-sentinel-")
            .tempdir()
            .expect("temp dir");
        for _ in 0..10 {
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                     dir {dir}\nlogfile {dir}/sentinel.log\n\
                     sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 10000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir = dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server --sentinel");
            if wait_for_ping(port, &mut child) {
                return Sentinel {
                    child: Some(child),
                    port,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis sentinel did not start on any of 10 free ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sentinel.log")
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("client")
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the sentinel")
    }

    /// The master's port as this sentinel sees it.
    pub fn master_port(&self, name: &str) -> Option<u16> {
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(name)
            .query(&mut self.conn())
            .ok()
            .flatten();
        addr.and_then(|(_, port)| port.parse().ok())
    }

    /// How many replicas of `name` this sentinel knows and considers usable.
    pub fn known_replicas(&self, name: &str) -> usize {
        let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(name)
            .query(&mut self.conn())
            .unwrap_or_default();
        replicas
            .iter()
            .filter(|r| {
                r.chunks(2)
                    .any(|kv| kv[0] == "flags" && kv.get(1).is_some_and(|f| f == "slave"))
            })
            .count()
    }

    /// `SENTINEL FAILOVER name`.
    pub fn failover(&self, name: &str) {
        let _: String = redis::cmd("SENTINEL")
            .arg("failover")
            .arg(name)
            .query(&mut self.conn())
            .expect("SENTINEL FAILOVER");
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `check` every 20 ms until it holds; panics after `limit` naming `what`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a log for the failure message of a test.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
