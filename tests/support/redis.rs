//! Real `redis-server` processes for the tests: standalone servers, replicas, sentinels
//! (`redis-server --sentinel`) and clusters (with or without replicas), each server on a
//! free loopback port in its own temporary folder, killed when dropped.
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

/// True when `redis-cli` can be run (needed to form a cluster). Like [`available`]: loud
/// skip, or a panic under `CI=true`.
pub fn cli_available() -> bool {
    let ok = Command::new("redis-cli")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("redis-cli is not installed, and CI=true: install it (.ci/run does)");
        }
        eprintln!(
            "\n**********************************************************************\n\
             SKIPPED: redis-cli is not installed, so this Redis Cluster test did not run.\n\
             Install it (Debian: apt-get install redis-tools) or run .ci/run.\n\
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

/// A free port whose cluster bus port (`port + 10000`) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if let Some(bus) = port.checked_add(10000)
            && TcpListener::bind(("127.0.0.1", bus)).is_ok()
        {
            return port;
        }
    }
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
    /// `--requirepass`: clients (and the test helpers here) must authenticate.
    pub password: Option<String>,
    /// A Redis Cluster node (`--cluster-enabled yes`, bus port = port + 10000).
    pub cluster: bool,
    /// TLS only (`--port 0 --tls-port <port>`), with these files.
    pub tls: Option<TlsFiles>,
}

/// The server side of `rediss://`: certificate, key and the CA `--tls-ca-cert-file` names.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
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
            let port = if spec.cluster {
                free_cluster_port()
            } else {
                free_port()
            };
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
        match &self.spec.tls {
            None => {
                cmd.arg("--port").arg(self.port.to_string());
            }
            Some(tls) => {
                cmd.args(["--port", "0", "--tls-port"])
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        cmd.args(["--bind", "127.0.0.1", "--protected-mode", "no"])
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
        if let Some(p) = &self.spec.password {
            cmd.arg("--requirepass").arg(p);
        }
        if self.spec.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.path().join(format!("nodes-{}.conf", self.port)))
                .args(["--cluster-node-timeout", "2000"]);
        }
        if let Some(master) = self.spec.replica_of {
            cmd.args(["--replicaof", "127.0.0.1"])
                .arg(master.to_string());
        }
        cmd.args(&self.spec.extra);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn redis-server");
        self.child = Some(child);
        let client = open_client(self.port, &self.spec);
        wait_for_ping(self.port, &client, self.child.as_mut().expect("child"))
    }

    /// `redis://127.0.0.1:<port>/0`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.spec.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// A plain (synchronous) connection for test assertions and setup.
    pub fn client(&self) -> redis::Connection {
        open_client(self.port, &self.spec)
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

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGSTOP: the process freezes (connections stay open, nothing is answered), like a
    /// node that hangs.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("the server runs");
        let status = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed");
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

    /// One `name:value` line of `INFO <section>`.
    pub fn info_field(&self, section: &str, name: &str) -> Option<String> {
        let info: String = self.cmd(&["INFO", section]);
        info.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        })
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

/// A client for the server on `port` as `spec` runs it (password, TLS trusting its CA).
fn open_client(port: u16, spec: &ServerSpec) -> redis::Client {
    let auth = spec
        .password
        .as_ref()
        .map(|p| format!(":{p}@"))
        .unwrap_or_default();
    match &spec.tls {
        None => redis::Client::open(format!("redis://{auth}127.0.0.1:{port}/")).expect("client"),
        Some(tls) => redis::Client::build_with_tls(
            format!("rediss://{auth}127.0.0.1:{port}/"),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(&tls.ca).expect("read the test CA")),
            },
        )
        .expect("tls client"),
    }
}

fn wait_for_ping(port: u16, client: &redis::Client, child: &mut Child) -> bool {
    let deadline = Instant::now() + READY;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return false; // exited: the port was taken, or the config was refused
        }
        let pong = client
            .get_connection_with_timeout(Duration::from_millis(500))
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
            if wait_for_ping(port, &open_client(port, &ServerSpec::default()), &mut child) {
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

/// A test CA and a server certificate it signed for `127.0.0.1` and `localhost`, written
/// as PEM files into a temporary folder (removed on drop).
pub struct TestTls {
    dir: tempfile::TempDir,
    pub files: TlsFiles,
}

impl TestTls {
    pub fn generate() -> TestTls {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
            SanType,
        };
        let dir = tempfile::Builder::new()
            .prefix("certgate-redis-tls-")
            .tempdir()
            .expect("temp dir");
        let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let ca_key = KeyPair::generate_for(alg).expect("CA key");
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "certgate test redis CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("self-signed CA");
        let issuer = Issuer::from_params(&ca, &ca_key);
        let key = KeyPair::generate_for(alg).expect("server key");
        let mut server = CertificateParams::default();
        server
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        server.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().expect("IA5")),
            SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
        ];
        let cert = server.signed_by(&key, &issuer).expect("sign server cert");
        let files = TlsFiles {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            ca: dir.path().join("ca.pem"),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write server.pem");
        std::fs::write(&files.key, key.serialize_pem()).expect("write server.key");
        std::fs::write(&files.ca, ca_cert.pem()).expect("write ca.pem");
        TestTls { dir, files }
    }

    /// The CA's certificates as DER (for a `state.redis.tls_ca_file` built by hand).
    pub fn ca_der(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::pem_file_iter(&self.files.ca)
            .expect("read ca.pem")
            .collect::<Result<_, _>>()
            .expect("parse ca.pem")
    }
}

/// A Redis Cluster of three masters (optionally with replicas), each a `redis-server` of
/// its own, formed with `redis-cli --cluster create`. Killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three masters, no replicas. `None` when redis-server or redis-cli is missing (skip;
    /// a panic under `CI=true`).
    pub fn start() -> Option<RedisCluster> {
        Self::start_with_replicas(0)
    }

    /// Three masters with `replicas` replicas each (`--cluster-replicas`), returned once
    /// every node says `cluster_state:ok` and every replica is in sync with its master.
    pub fn start_with_replicas(replicas: usize) -> Option<RedisCluster> {
        if !available() || !cli_available() {
            return None;
        }
        let spec = ServerSpec {
            cluster: true,
            ..ServerSpec::default()
        };
        let nodes = (0..3 * (1 + replicas))
            .map(|_| RedisServer::start_with(spec.clone()).expect("cluster node"))
            .collect::<Vec<_>>();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = create.spawn().expect("spawn redis-cli --cluster create");
        let deadline = Instant::now() + READY;
        let status = loop {
            if let Some(status) = child.try_wait().expect("redis-cli status") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-cli --cluster create did not finish within {READY:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = child.wait_with_output().expect("redis-cli output");
        assert!(
            status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        for n in &cluster.nodes {
            if n.info_field("replication", "role").as_deref() == Some("slave") {
                wait_until(
                    &format!("replica 127.0.0.1:{} in sync", n.port),
                    READY,
                    || n.info_field("replication", "master_link_status").as_deref() == Some("up"),
                );
            }
        }
        Some(cluster)
    }

    /// Waits until every running node says `cluster_state:ok`.
    pub fn wait_ok(&self) {
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            wait_until(
                &format!("cluster_state:ok on 127.0.0.1:{}", n.port),
                READY,
                || {
                    n.cmd::<String>(&["CLUSTER", "INFO"])
                        .contains("cluster_state:ok")
                },
            );
        }
    }

    /// The seed URLs (every node).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// A node that runs (to ask about the cluster).
    fn any_running(&self) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running cluster node")
    }

    /// The master that serves `key`'s slot, as the cluster sees it now.
    pub fn node_for(&self, key: &str) -> &RedisServer {
        let asked = self.any_running();
        let slot: i64 = asked.cmd(&["CLUSTER", "KEYSLOT", key]);
        let ranges: Vec<redis::Value> = asked.cmd(&["CLUSTER", "SLOTS"]);
        let int = |v: &redis::Value| match v {
            redis::Value::Int(i) => *i,
            _ => -1,
        };
        let port = ranges
            .iter()
            .find_map(|range| {
                let redis::Value::Array(r) = range else {
                    return None;
                };
                let redis::Value::Array(master) = &r[2] else {
                    return None;
                };
                (int(&r[0])..=int(&r[1]))
                    .contains(&slot)
                    .then(|| int(&master[1]))
            })
            .expect("a node serves every slot");
        self.nodes
            .iter()
            .find(|n| i64::from(n.port) == port)
            .expect("the serving node is one of ours")
    }

    /// The running replica of the master on `master_port`.
    pub fn replica_of(&self, master_port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .find(|n| {
                n.info_field("replication", "role").as_deref() == Some("slave")
                    && n.info_field("replication", "master_port") == Some(master_port.to_string())
            })
            .unwrap_or_else(|| panic!("no replica of 127.0.0.1:{master_port}"))
    }

    /// Waits until every replica of `master` has acknowledged all of its writes so far
    /// (each replica's offset in `INFO replication` reaches the master's).
    pub fn wait_replicated(&self, master: &RedisServer) {
        let target: u64 = master
            .info_field("replication", "master_repl_offset")
            .and_then(|o| o.parse().ok())
            .expect("master_repl_offset");
        wait_until(
            &format!(
                "the replicas of 127.0.0.1:{} at offset {target}",
                master.port
            ),
            READY,
            || {
                let info: String = master.cmd(&["INFO", "replication"]);
                let offsets: Vec<u64> = info
                    .lines()
                    .filter(|l| l.starts_with("slave"))
                    .filter_map(|l| {
                        l.split(',')
                            .find_map(|kv| kv.strip_prefix("offset="))
                            .and_then(|o| o.parse().ok())
                    })
                    .collect();
                !offsets.is_empty() && offsets.iter().all(|&o| o >= target)
            },
        );
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
