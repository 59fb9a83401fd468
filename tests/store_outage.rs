//! Redis outages under load, as an operator would see them: two gateway instances on one
//! real `redis-server`, kept-alive and new connections of identities looked up before the
//! outage, a certificate revoked before it, and identities never seen, while Redis is
//! killed (SIGKILL, then restarted with its data) or hung (SIGSTOP, then SIGCONT).
//!
//! What must hold (README, "When Redis is unreachable"): no revoked certificate is ever let
//! through; cached answers serve as `state.on_error` allows (`fail_closed`: entries younger
//! than `state.cache.ttl`; `serve_stale`: up to `state.max_stale`); everything else gets 503
//! without waiting longer than `state.redis.timeout`; admin writes fail loudly; after the
//! outage, every instance sees revocations again within the propagation bound.
//!
//! Each run prints its figures (answers per class, wrong allows, p99 latency during the
//! outage, time to recover) and writes them to `outage-report.md` in the test's temporary
//! folder; `benches/OUTAGE.md` records one run. When `redis-server` is missing the tests
//! skip loudly (a failure under `CI=true`).

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certgate::app::Gateway;
use rustls_pki_types::CertificateDer;
use support::redis::{RedisServer, ServerSpec};
use support::{H1, Harness, Leaf, Options, RawClient, metric, within};

/// The contract's bound on a revocation reaching every instance.
const PROPAGATION: Duration = Duration::from_secs(1);
/// `state.redis.timeout` as configured below (the default).
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// Looked up before the outage, asked again on a kept-alive connection.
    CachedKeptAlive,
    /// Looked up before the outage, asked again on a new connection each time.
    CachedNewConnection,
    /// Revoked before the outage (and cached as revoked).
    Revoked,
    /// A certificate the instance has never seen.
    NeverSeen,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::CachedKeptAlive => "cached, kept-alive",
            Class::CachedNewConnection => "cached, new connection",
            Class::Revoked => "revoked before the outage",
            Class::NeverSeen => "never seen",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Before,
    During,
    After,
}

#[derive(Debug)]
struct Sample {
    class: Class,
    phase: Phase,
    /// Since the outage began.
    at: Duration,
    status: u16,
    latency: Duration,
}

/// Where the load generators write; the phase is switched by the test.
struct Recorder {
    began: Mutex<Option<Instant>>,
    phase: Mutex<Phase>,
    samples: Mutex<Vec<Sample>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Recorder {
    fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            began: Mutex::new(None),
            phase: Mutex::new(Phase::Before),
            samples: Mutex::new(Vec::new()),
            stop: tokio::sync::watch::channel(false).0,
        })
    }

    fn record(&self, class: Class, sent: Instant, status: u16) {
        let latency = sent.elapsed();
        let mut phase = *self.phase.lock().unwrap();
        let began = *self.began.lock().unwrap();
        // A request sent before the outage began may be answered by the store just before it
        // stopped (the answer already in the socket): it belongs to the time before.
        if phase == Phase::During && began.is_some_and(|b| sent < b) {
            phase = Phase::Before;
        }
        let at = began.map_or(Duration::ZERO, |b| sent.saturating_duration_since(b));
        self.samples.lock().unwrap().push(Sample {
            class,
            phase,
            at,
            status,
            latency,
        });
    }

    fn outage_begins(&self) {
        *self.began.lock().unwrap() = Some(Instant::now());
        *self.phase.lock().unwrap() = Phase::During;
    }

    fn outage_ends(&self) {
        *self.phase.lock().unwrap() = Phase::After;
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }
}

async fn open(listen: SocketAddr, ca: &CertificateDer<'static>, leaf: &Leaf) -> Option<H1> {
    let conn = RawClient::new(listen, ca, Some(leaf))
        .connect()
        .await
        .ok()?;
    Some(conn.into_http1().await)
}

/// One request; a transport failure is status 0.
async fn ask(conn: &mut H1, path: &str) -> u16 {
    match conn.send("GET", path, &[]).await {
        Ok(r) => r.status,
        Err(_) => 0,
    }
}

/// Starts the load on `listen`: one kept-alive connection per cached leaf and for the
/// revoked leaf, one loop of new connections over the cached leaves, one loop of new
/// connections with never-seen leaves.
fn start_load(
    rec: &Arc<Recorder>,
    listen: SocketAddr,
    ca: &CertificateDer<'static>,
    cached: &[Leaf],
    revoked: &Leaf,
    strangers: Vec<Leaf>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let kept: Vec<(Class, Leaf)> = cached
        .iter()
        .map(|l| (Class::CachedKeptAlive, l.clone()))
        .chain([(Class::Revoked, revoked.clone())])
        .collect();
    for (class, leaf) in kept {
        let (rec, ca) = (rec.clone(), ca.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = open(listen, &ca, &leaf).await;
            while !rec.stopped() {
                let sent = Instant::now();
                let status = match conn.as_mut() {
                    Some(c) => ask(c, "/app/kept").await,
                    None => 0,
                };
                rec.record(class, sent, status);
                if status == 0 {
                    conn = open(listen, &ca, &leaf).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let (rec2, ca2, cached) = (rec.clone(), ca.clone(), cached.to_vec());
    tasks.push(tokio::spawn(async move {
        let mut i = 0;
        while !rec2.stopped() {
            let leaf = &cached[i % cached.len()];
            i += 1;
            let sent = Instant::now();
            let status = match open(listen, &ca2, leaf).await {
                Some(mut c) => ask(&mut c, "/app/new").await,
                None => 0,
            };
            rec2.record(Class::CachedNewConnection, sent, status);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }));
    let (rec3, ca3) = (rec.clone(), ca.clone());
    tasks.push(tokio::spawn(async move {
        let mut strangers = strangers.into_iter();
        while !rec3.stopped() {
            let Some(leaf) = strangers.next() else { break };
            let sent = Instant::now();
            let status = match open(listen, &ca3, &leaf).await {
                Some(mut c) => ask(&mut c, "/app/stranger").await,
                None => 0,
            };
            rec3.record(Class::NeverSeen, sent, status);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }));
    tasks
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The report of one run, and the checks every run must pass.
struct Report {
    text: String,
}

impl Report {
    fn new(title: &str, setup: &str) -> Report {
        let mut text = String::new();
        let _ = writeln!(text, "## {title}\n\n{setup}\n");
        Report { text }
    }

    fn table(&mut self, samples: &[Sample]) {
        let _ = writeln!(
            self.text,
            "| class | phase | answered 200 | refused 403 | refused 503 | other | p99 latency |\n|---|---|---:|---:|---:|---:|---:|"
        );
        let mut groups: BTreeMap<(Class, Phase), Vec<&Sample>> = BTreeMap::new();
        for s in samples {
            groups.entry((s.class, s.phase)).or_default().push(s);
        }
        for ((class, phase), group) in &groups {
            let count = |st: u16| group.iter().filter(|s| s.status == st).count();
            let other = group
                .iter()
                .filter(|s| ![200, 403, 503].contains(&s.status))
                .count();
            let mut lat: Vec<Duration> = group.iter().map(|s| s.latency).collect();
            lat.sort();
            let _ = writeln!(
                self.text,
                "| {} | {:?} | {} | {} | {} | {} | {} |",
                class.name(),
                phase,
                count(200),
                count(403),
                count(503),
                other,
                ms(percentile(&lat, 0.99))
            );
        }
        self.text.push('\n');
    }

    fn line(&mut self, s: String) {
        let _ = writeln!(self.text, "- {s}");
    }

    fn finish(self, file: &str) {
        eprintln!("{}", self.text);
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(file);
        std::fs::write(&path, &self.text).expect("write the outage report");
        eprintln!("(written to {})", path.display());
    }
}

fn options(url: &str, state: &[&str]) -> Options {
    Options {
        redis_url: Some(url.to_string()),
        extra_state: state.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    }
}

async fn second_instance(h: &Harness) -> Gateway {
    within("second instance", certgate::app::start(h.load_config()))
        .await
        .unwrap_or_else(|e| panic!("second instance: {e:#}"))
}

/// Looks every leaf up on `listen` so it is cached there; the revoked one must be refused.
async fn warm(listen: SocketAddr, ca: &CertificateDer<'static>, cached: &[Leaf], revoked: &Leaf) {
    for leaf in cached {
        let mut c = open(listen, ca, leaf).await.expect("handshake");
        assert_eq!(ask(&mut c, "/app/warm").await, 200);
    }
    let mut c = open(listen, ca, revoked).await.expect("handshake");
    assert_eq!(ask(&mut c, "/app/warm").await, 403);
}

/// Polls a never-seen identity on `listen` until it is allowed; returns how long it took.
async fn until_allowed(listen: SocketAddr, ca: &CertificateDer<'static>, leaf: &Leaf) -> Duration {
    let start = Instant::now();
    loop {
        if let Some(mut c) = open(listen, ca, leaf).await
            && ask(&mut c, "/app/recovered").await == 200
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not recovered 20 s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/readyz` on `admin` until it says `ok` (not `degraded`); returns how long it took.
async fn until_store_answers(admin: SocketAddr) -> Duration {
    let start = Instant::now();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    loop {
        if let Ok(r) = http.get(format!("http://{admin}/readyz")).send().await
            && let Ok(text) = r.text().await
            && text.contains("\"ok\"")
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the instance still reports the outage 20 s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long after a revocation on `admin` the other instance refuses `leaf`.
async fn propagation(
    admin: &support::Admin,
    listen: SocketAddr,
    ca: &CertificateDer<'static>,
    leaf: &Leaf,
) -> Duration {
    let mut conn = open(listen, ca, leaf).await.expect("handshake");
    assert_eq!(ask(&mut conn, "/app/before").await, 200);
    admin.revoke(&leaf.serial).await;
    let revoked = Instant::now();
    loop {
        match ask(&mut conn, "/app/after").await {
            // Refused, or the open connection closed by the revocation itself.
            403 | 0 => return revoked.elapsed(),
            200 => assert!(
                revoked.elapsed() < PROPAGATION,
                "still allowed {:?} after the revocation",
                revoked.elapsed()
            ),
            other => panic!("unexpected {other} after the outage"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// An admin write during the outage: 503 `store_unavailable` from the API, and the CLI
/// says so and exits non-zero.
async fn admin_write_fails_loudly(h: &Harness, serial: &str) {
    let r = h
        .admin()
        .post(&format!("/v1/certificates/{serial}/revoke"), None)
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "store_unavailable", "{}", r.text());
    let config = h.config_path.clone();
    let url = format!("http://{}", h.admin_addr());
    let serial = serial.to_string();
    let out = within(
        "certgate admin revoke",
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_certgate"))
                .arg("--config")
                .arg(&config)
                .args(["admin", "--url", &url, "revoke", &serial])
                .output()
        }),
    )
    .await
    .expect("join")
    .expect("run certgate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the CLI reported success: {stderr}");
    assert!(stderr.contains("store_unavailable"), "{stderr}");
}

fn leaves(h: &Harness, prefix: &str, n: usize) -> Vec<Leaf> {
    (0..n)
        .map(|i| h.pki.client(&format!("{prefix}{i}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_fail_closed() {
    let Some(mut redis) = RedisServer::start_with(ServerSpec {
        persistent: true,
        ..ServerSpec::default()
    }) else {
        return;
    };
    let ttl = Duration::from_secs(3);
    let outage = Duration::from_secs(5);
    let h = Harness::with(options(
        &redis.url(),
        &["cache:", "  ttl: 3s", "on_error: fail_closed"],
    ))
    .await;
    let b = second_instance(&h).await;
    let ca = h.pki.server_ca.der.clone();
    let cached = leaves(&h, "cached", 4);
    let revoked = h.pki.client("revoked");
    let strangers = leaves(&h, "stranger", 400);
    let after = h.pki.client("after");
    let late = h.pki.client("late");
    h.admin().revoke(&revoked.serial).await;
    let warmed = Instant::now();
    warm(b.listen, &ca, &cached, &revoked).await;
    warm(b.listen, &ca, std::slice::from_ref(&late), &revoked).await;

    let rec = Recorder::new();
    let tasks = start_load(&rec, b.listen, &ca, &cached, &revoked, strangers);
    tokio::time::sleep(Duration::from_millis(500)).await;

    redis.kill();
    rec.outage_begins();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin_write_fails_loudly(&h, &late.serial).await;
    tokio::time::sleep(outage.saturating_sub(killed.elapsed())).await;

    // The phase changes first: an answer that races the return counts as after it.
    rec.outage_ends();
    redis.restart();
    let back = Instant::now();
    let recovered = until_allowed(b.listen, &ca, &after).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    rec.stop.send_replace(true);
    for t in tasks {
        within("load task", t).await.expect("load task");
    }
    let a_back = until_store_answers(h.admin_addr()).await;
    let spread = propagation(&h.admin(), b.listen, &ca, &late).await;

    let samples = std::mem::take(&mut *rec.samples.lock().unwrap());
    let during = |c: Class| {
        samples
            .iter()
            .filter(move |s| s.class == c && s.phase == Phase::During)
    };
    // Never open: the revoked certificate is never let through; nothing is allowed on an
    // entry older than ttl (entries were fetched before the kill).
    let wrong: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status == 200)
        .filter(|s| {
            s.class == Class::Revoked
                || (s.phase == Phase::During
                    && (s.class == Class::NeverSeen || s.at > ttl + Duration::from_millis(200)))
        })
        .collect();
    assert!(wrong.is_empty(), "{} wrong allows: {wrong:?}", wrong.len());
    // Fresh entries answer during the outage until they are ttl old (they were read no
    // earlier than `warmed`).
    let fresh_until = ttl
        .saturating_sub(killed.duration_since(warmed))
        .saturating_sub(Duration::from_millis(100));
    let fresh_ok = during(Class::CachedKeptAlive)
        .filter(|s| s.at < fresh_until && s.status == 200)
        .count();
    assert!(
        fresh_ok > 0,
        "no cached identity was answered during the outage"
    );
    let fresh_503 = during(Class::CachedKeptAlive)
        .filter(|s| s.at < fresh_until && s.status == 503)
        .count();
    assert_eq!(fresh_503, 0, "cached identities refused within ttl");
    assert!(
        during(Class::NeverSeen).all(|s| s.status == 503 || s.status == 0),
        "a never-seen identity was decided while Redis was down"
    );
    let mut refused: Vec<Duration> = samples
        .iter()
        .filter(|s| s.phase == Phase::During && s.status == 503)
        .map(|s| s.latency)
        .collect();
    refused.sort();

    let mut report = Report::new(
        "Redis killed (SIGKILL) for 5 s, `on_error: fail_closed`, `cache.ttl: 3s`",
        "Two instances on one persistent `redis-server`; the load runs on instance B, admin \
         calls go to A. Identities were looked up just before the kill.",
    );
    report.table(&samples);
    report.line(format!("wrong allows: {}", wrong.len()));
    report.line(format!(
        "p99 of the 503 answers during the outage: {} (of {})",
        ms(percentile(&refused, 0.99)),
        refused.len()
    ));
    report.line(format!(
        "recovery: a never-seen identity is allowed {} after Redis restarted",
        ms(recovered)
    ));
    report.line(format!(
        "instance A (admin calls only, no traffic) reports the store back {} after B recovered",
        ms(a_back)
    ));
    report.line(format!(
        "after the outage, a revocation on A is enforced on B after {}",
        ms(spread)
    ));
    report.line(format!(
        "Redis was back {} after the kill",
        ms(back.duration_since(killed))
    ));
    report.finish("outage-report-kill.md");

    b.shutdown().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_hung_under_load_serve_stale() {
    let Some(redis) = RedisServer::start_with(ServerSpec {
        persistent: true,
        ..ServerSpec::default()
    }) else {
        return;
    };
    let ttl = Duration::from_secs(1);
    let outage = Duration::from_secs(4);
    let h = Harness::with(options(
        &redis.url(),
        &[
            "cache:",
            "  ttl: 1s",
            "on_error: serve_stale",
            "max_stale: 60s",
        ],
    ))
    .await;
    let b = second_instance(&h).await;
    let ca = h.pki.server_ca.der.clone();
    let cached = leaves(&h, "cached", 4);
    let revoked = h.pki.client("revoked");
    let strangers = leaves(&h, "stranger", 300);
    let after = h.pki.client("after");
    let late = h.pki.client("late");
    h.admin().revoke(&revoked.serial).await;
    warm(b.listen, &ca, &cached, &revoked).await;
    warm(b.listen, &ca, std::slice::from_ref(&late), &revoked).await;

    let rec = Recorder::new();
    let tasks = start_load(&rec, b.listen, &ca, &cached, &revoked, strangers);
    tokio::time::sleep(Duration::from_millis(500)).await;

    redis.pause();
    rec.outage_begins();
    let hung = Instant::now();
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    admin_write_fails_loudly(&h, &late.serial).await;
    tokio::time::sleep(outage.saturating_sub(hung.elapsed())).await;

    rec.outage_ends();
    redis.resume();
    let recovered = until_allowed(b.listen, &ca, &after).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    rec.stop.send_replace(true);
    for t in tasks {
        within("load task", t).await.expect("load task");
    }
    let a_back = until_store_answers(h.admin_addr()).await;
    let spread = propagation(&h.admin(), b.listen, &ca, &late).await;

    let samples = std::mem::take(&mut *rec.samples.lock().unwrap());
    let wrong: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status == 200)
        .filter(|s| {
            s.class == Class::Revoked || (s.phase == Phase::During && s.class == Class::NeverSeen)
        })
        .collect();
    assert!(wrong.is_empty(), "{} wrong allows: {wrong:?}", wrong.len());
    let wrong = wrong.len();
    // Cached identities are answered throughout (stale after ttl, within max_stale).
    let cached_refused = samples
        .iter()
        .filter(|s| {
            s.phase == Phase::During
                && matches!(s.class, Class::CachedKeptAlive | Class::CachedNewConnection)
                && s.status != 200
        })
        .count();
    assert_eq!(
        cached_refused, 0,
        "cached identities refused during the hang"
    );
    let mut refused: Vec<Duration> = samples
        .iter()
        .filter(|s| s.phase == Phase::During && s.status == 503)
        .map(|s| s.latency)
        .collect();
    refused.sort();
    assert!(
        !refused.is_empty(),
        "never-seen identities were not refused"
    );
    // Bounded waiting (state.redis.timeout): a wide margin for a loaded machine, and far
    // below the 2 s a hung Redis used to cost.
    let p99 = percentile(&refused, 0.99);
    assert!(
        p99 < REDIS_TIMEOUT + Duration::from_millis(700),
        "p99 of the 503 answers under a hung Redis: {p99:?}"
    );
    let stale = metric(b.metrics, "certgate_state_cache_total{result=\"stale\"}").await;
    assert!(stale > 0.0, "no stale answer was counted");

    let mut report = Report::new(
        "Redis hung (SIGSTOP) for 4 s, `on_error: serve_stale`, `max_stale: 60s`, `cache.ttl: 1s`",
        "Two instances on one `redis-server`; the load runs on instance B, admin calls go to \
         A. `state.redis.timeout` is the default 500 ms.",
    );
    report.table(&samples);
    report.line(format!("wrong allows: {wrong}"));
    report.line(format!(
        "p99 of the 503 answers during the hang: {} (of {}); max {}",
        ms(p99),
        refused.len(),
        ms(refused[refused.len() - 1])
    ));
    report.line(format!("stale answers counted on B: {stale}"));
    report.line(format!(
        "recovery: a never-seen identity is allowed {} after SIGCONT",
        ms(recovered)
    ));
    report.line(format!(
        "instance A (admin calls only, no traffic) reports the store back {} after B recovered",
        ms(a_back)
    ));
    report.line(format!(
        "after the hang, a revocation on A is enforced on B after {}",
        ms(spread)
    ));
    report.finish("outage-report-hang.md");

    b.shutdown().await;
    h.shutdown().await;
}
