//! The gateway on the Redis backend, against real `redis-server` processes: revocations
//! reaching other instances, Redis dying under load, restarting empty (the data-loss guard)
//! or with its data, Sentinel failover, and what a cache hit costs Redis.
//!
//! Each test starts its own servers on free ports (see `support::redis`); when
//! `redis-server` is missing they are skipped with a loud message (a failure under
//! `CI=true`). Every wait is bounded.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use certgate::app::Gateway;
use rustls_pki_types::CertificateDer;
use support::redis::{RedisCluster, RedisServer, Sentinel, ServerSpec, wait_until};
use support::{H1, Harness, Leaf, Options, RawClient, STEP, metric, within};

/// The contract's bound on a revocation reaching every instance.
const PROPAGATION: Duration = Duration::from_secs(1);

fn redis_options(url: &str, extra_state: &[&str]) -> Options {
    Options {
        redis_url: Some(url.to_string()),
        extra_state: extra_state.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    }
}

/// A second gateway instance from the same files (same PKI, token, Redis).
async fn second_instance(h: &Harness) -> Gateway {
    within(
        "app::start (second instance)",
        certgate::app::start(h.load_config()),
    )
    .await
    .unwrap_or_else(|e| panic!("second instance: {e:#}"))
}

async fn open(listen: SocketAddr, server_ca: &CertificateDer<'static>, leaf: &Leaf) -> H1 {
    RawClient::new(listen, server_ca, Some(leaf))
        .connect()
        .await
        .expect("handshake")
        .into_http1()
        .await
}

/// Polls `status` on `conn` until it is `want`; every other answer must be in `allowed`.
/// A revocation reaches the open connections of its certificate through pub/sub, which can
/// arrive after a connection opened just after the revocation: waits until it has been
/// delivered (a probe connection of the certificate is refused and then closed, or stays
/// open for a second because the event came first), so the connections a test opens next
/// stay open.
async fn revocation_delivered(h: &Harness, leaf: &Leaf) {
    let mut probe = open(h.listen(), &h.pki.server_ca.der, leaf).await;
    if let Some(r) = probe.get_or_closed("/app/probe").await {
        assert_eq!(r.status, 403, "{}", r.text());
    }
    probe.wait_closed(Duration::from_secs(1)).await;
}

async fn until_status(conn: &mut H1, path: &str, want: u16, allowed: &[u16], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let Some(r) = conn.get_or_closed(path).await else {
            // Closed by the gateway: a refusal ends an open connection of the certificate.
            assert_eq!(
                want, 403,
                "{path}: connection closed while waiting for {want}"
            );
            return;
        };
        if r.status == want {
            return;
        }
        assert!(
            allowed.contains(&r.status),
            "{path}: unexpected {} {}",
            r.status,
            r.text()
        );
        assert!(
            Instant::now() < deadline,
            "{path}: still {} after {limit:?} (want {want})",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_reaches_another_instance_on_an_open_connection() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // A long TTL: only pub/sub can explain a refusal within a second.
    let h = Harness::with(redis_options(&redis.url(), &["cache:", "  ttl: 60s"])).await;
    let b = second_instance(&h).await;
    let admin_a = h.admin();

    let mut latencies = Vec::new();
    for i in 0..50 {
        let leaf = h.pki.client(&format!("user{i}"));
        let mut conn = open(b.listen, &h.pki.server_ca.der, &leaf).await;
        let r = conn.get("/app/before").await;
        assert_eq!(r.status, 200, "before revocation: {}", r.text());

        admin_a.revoke(&leaf.serial).await;
        let revoked = Instant::now();
        loop {
            let Some(r) = conn.get_or_closed("/app/after").await else {
                // The revocation closed the open connection.
                break;
            };
            if r.status == 403 {
                assert_eq!(r.json()["error"], "revoked");
                break;
            }
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(
                revoked.elapsed() < PROPAGATION,
                "instance B still allows {} {:?} after the revocation on A",
                leaf.serial,
                revoked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(revoked.elapsed());
    }
    latencies.sort();
    eprintln!(
        "revocation propagation A -> B over {} revocations: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );

    // A reset travels the same way.
    let bob = h.pki.enrolled("bob", 1);
    let mut conn = open(b.listen, &h.pki.server_ca.der, &bob).await;
    assert_eq!(conn.get("/app/bob").await.status, 200);
    admin_a.reset("bob").await;
    until_status(&mut conn, "/app/bob", 403, &[200], PROPAGATION).await;

    b.shutdown().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_never_lets_an_undecided_request_through() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let h = Harness::with(redis_options(&redis.url(), &["cache:", "  ttl: 1s"])).await;
    let admin = h.admin();
    let leaves: Vec<Leaf> = (0..8).map(|i| h.pki.client(&format!("load{i}"))).collect();
    let revoked = &leaves[0];
    admin.revoke(&revoked.serial).await;
    revocation_delivered(&h, revoked).await;

    let mut conns = Vec::new();
    for leaf in &leaves {
        conns.push(open(h.listen(), &h.pki.server_ca.der, leaf).await);
    }
    // Load before the crash: everything decided.
    for (i, conn) in conns.iter_mut().enumerate() {
        let want = if i == 0 { 403 } else { 200 };
        assert_eq!(conn.get("/app/warm").await.status, want);
    }

    redis.kill();
    let killed = Instant::now();
    let ttl = Duration::from_secs(1);
    let mut allowed_after_ttl = 0;
    let mut allowed_within_ttl = 0;
    let mut unavailable = 0;
    let mut slowest = Duration::ZERO;
    while killed.elapsed() < ttl * 3 {
        for (i, conn) in conns.iter_mut().enumerate() {
            let sent = Instant::now();
            let r = conn.get("/app/load").await;
            slowest = slowest.max(sent.elapsed());
            match r.status {
                200 => {
                    assert!(i != 0, "the revoked certificate was let through");
                    // Only an entry fetched before the crash, still fresh, may answer.
                    if sent.duration_since(killed) > ttl + Duration::from_millis(100) {
                        allowed_after_ttl += 1;
                    } else {
                        allowed_within_ttl += 1;
                    }
                }
                403 => assert_eq!(i, 0, "{}", r.text()),
                503 => {
                    assert_eq!(r.json()["error"], "store_unavailable");
                    unavailable += 1;
                }
                other => panic!("unexpected {other}: {}", r.text()),
            }
        }
    }
    assert_eq!(
        allowed_after_ttl, 0,
        "requests allowed on entries older than state.cache.ttl while Redis was down"
    );
    assert!(
        unavailable > 0,
        "no request was refused while Redis was down"
    );
    assert!(
        allowed_within_ttl > 0,
        "fresh cache entries did not answer while Redis was down"
    );
    // Still ready (cached answers serve; every instance on this Redis is in the same
    // outage), and says it is degraded.
    assert_eq!(readyz(&h).await, (200, "degraded".to_string()));
    // A certificate never seen before cannot be decided at all.
    let stranger = h.pki.client("stranger");
    let mut conn = open(h.listen(), &h.pki.server_ca.der, &stranger).await;
    assert_eq!(conn.get("/app/new").await.status, 503);
    assert_eq!(
        metric(h.metrics_addr(), "certgate_state_store_up").await,
        0.0
    );
    assert!(metric(h.metrics_addr(), "certgate_state_store_errors_total").await > 0.0);
    eprintln!("slowest answer while Redis was down: {slowest:?}");
    assert!(
        slowest < STEP,
        "a request waited {slowest:?} on a dead Redis"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_empty_trips_the_data_loss_guard_until_acknowledged() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let h = Harness::with(redis_options(&redis.url(), &["cache:", "  ttl: 60s"])).await;
    let admin = h.admin();
    let alice = h.pki.client("alice");
    let bob = h.pki.client("bob");
    admin.revoke(&alice.serial).await;
    revocation_delivered(&h, &alice).await;
    let mut a = open(h.listen(), &h.pki.server_ca.der, &alice).await;
    let mut b = open(h.listen(), &h.pki.server_ca.der, &bob).await;
    assert_eq!(a.get("/app/1").await.status, 403);
    assert_eq!(b.get("/app/1").await.status, 200);
    assert_eq!(
        metric(h.metrics_addr(), "certgate_state_store_data_lost").await,
        0.0
    );

    // Restarted without persistence: alice's revocation is gone from Redis.
    redis.restart();
    // Alice must never be let through; both end up refused with 503.
    until_status(&mut a, "/app/2", 503, &[403], STEP).await;
    until_status(&mut b, "/app/2", 503, &[200], STEP).await;
    assert_eq!(a.get("/app/3").await.status, 503);
    assert_eq!(
        metric(h.metrics_addr(), "certgate_state_store_data_lost").await,
        1.0
    );
    // Not ready while the data cannot be trusted, although Redis answers.
    assert_eq!(readyz_status(&h).await, 503);
    assert_eq!(
        metric(
            h.metrics_addr(),
            "certgate_state_store_data_loss_events_total"
        )
        .await,
        1.0
    );
    // A second instance started now refuses as well (the guard marked meta).
    let second = second_instance(&h).await;
    let mut s = open(second.listen, &h.pki.server_ca.der, &bob).await;
    assert_eq!(s.get("/app/4").await.status, 503);

    // The operator's path: re-apply the revocations (writes are accepted while lookups are
    // refused), then acknowledge (e.g. from another process).
    admin.revoke(&alice.serial).await;
    assert_eq!(a.get("/app/4").await.status, 503);
    // Through the documented command, as an operator would.
    let config_path = h.config_path.clone();
    let out = within(
        "certgate admin acknowledge-data-loss",
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_certgate"))
                .arg("--config")
                .arg(&config_path)
                .args(["admin", "acknowledge-data-loss"])
                .output()
        }),
    )
    .await
    .expect("join")
    .expect("run certgate");
    assert!(
        out.status.success(),
        "acknowledge-data-loss failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every instance resumes by itself (next probe), without a restart.
    until_status(&mut b, "/app/5", 200, &[503], STEP).await;
    assert_eq!(readyz_status(&h).await, 200);
    until_status(&mut s, "/app/5", 200, &[503], STEP).await;
    assert_eq!(
        metric(h.metrics_addr(), "certgate_state_store_data_lost").await,
        0.0
    );
    // Alice's revocation, re-applied before the acknowledgement, holds at once.
    assert!(
        a.get_or_closed("/app/6")
            .await
            .is_none_or(|r| r.status == 403),
        "alice allowed after the acknowledgement"
    );
    // CRL numbers keep growing past anything issued before the loss.
    let n: u64 = redis.cmd(&["GET", "certgate:crl_number"]);
    assert!(n > 1_000_000_000, "crl_number {n}");

    second.shutdown().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnect_after_a_restart_clears_the_cache_and_restores_service() {
    let Some(mut redis) = RedisServer::start_with(ServerSpec {
        persistent: true,
        ..ServerSpec::default()
    }) else {
        return;
    };
    // A long TTL: a stale "not revoked" would survive the whole test unless the cache is
    // cleared on reconnect.
    let h = Harness::with(redis_options(&redis.url(), &["cache:", "  ttl: 300s"])).await;
    let alice = h.pki.client("alice");
    let bob = h.pki.client("bob");
    let mut a = open(h.listen(), &h.pki.server_ca.der, &alice).await;
    let mut b = open(h.listen(), &h.pki.server_ca.der, &bob).await;
    assert_eq!(a.get("/app/1").await.status, 200);
    assert_eq!(b.get("/app/1").await.status, 200);

    redis.kill();
    redis.restart();
    // A revocation this instance could not hear about (written while it was
    // disconnected, its event lost): only a cleared cache can see it.
    let key = format!("certgate:revoked:{}", alice.serial);
    let now = certgate::core::clock::now().to_string();
    let _: i64 = redis.cmd(&["HSET", &key, "reason", "keyCompromise", "revoked_at", &now]);

    until_status(&mut a, "/app/2", 403, &[200, 503], STEP).await;
    until_status(&mut b, "/app/2", 200, &[503], STEP).await;
    wait_until_metric(h.metrics_addr(), "certgate_state_store_up", 1.0).await;
    assert_eq!(
        metric(h.metrics_addr(), "certgate_state_store_data_lost").await,
        0.0,
        "a restart with the data intact is not a data loss"
    );
    h.shutdown().await;
}

async fn wait_until_metric(metrics: SocketAddr, name: &str, want: f64) {
    let deadline = Instant::now() + STEP;
    while metric(metrics, name).await != want {
        assert!(Instant::now() < deadline, "{name} never became {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn readyz_status(h: &Harness) -> u16 {
    readyz(h).await.0
}

/// `/readyz`'s status and its `status` field (`ok`, `degraded`) or `error` code.
async fn readyz(h: &Harness) -> (u16, String) {
    let url = format!("http://{}/readyz", h.admin_addr());
    let resp = reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP)
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .expect("readyz");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("readyz body");
    let v: serde_json::Value = serde_json::from_str(&text).expect("readyz answers JSON");
    let word = v["status"].as_str().or(v["error"].as_str()).unwrap_or("");
    (status, word.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_waits_for_the_first_answer_from_redis() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    redis.kill();
    let h = Harness::with(redis_options(&redis.url(), &[])).await;
    assert_eq!(readyz_status(&h).await, 503);
    let leaf = h.pki.client("alice");
    let mut conn = open(h.listen(), &h.pki.server_ca.der, &leaf).await;
    assert_eq!(conn.get("/app/1").await.status, 503);
    redis.restart();
    let deadline = Instant::now() + STEP;
    while readyz_status(&h).await != 200 {
        assert!(Instant::now() < deadline, "never ready after Redis came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_status(&mut conn, "/app/2", 200, &[503], STEP).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failover_moves_writes_and_keeps_revocations_propagating() {
    let Some(master) = RedisServer::start() else {
        return;
    };
    let replica = RedisServer::start_with(ServerSpec {
        replica_of: Some(master.port),
        ..ServerSpec::default()
    })
    .expect("replica");
    // A second replica: after the failover it follows the new master at once, so writes
    // (which wait for one replica in sentinel mode) resume without waiting for Sentinel to
    // convert the old master, which takes ~10 s.
    let replica2 = RedisServer::start_with(ServerSpec {
        replica_of: Some(master.port),
        ..ServerSpec::default()
    })
    .expect("second replica");
    for r in [&replica, &replica2] {
        wait_until("replica in sync", STEP, || {
            let info: String = r.cmd(&["INFO", "replication"]);
            info.contains("master_link_status:up")
        });
    }
    let sentinel = Sentinel::start("certgate-test", master.port);
    wait_until("sentinel sees both replicas", STEP, || {
        sentinel.known_replicas("certgate-test") == 2
    });

    let redis_block = [
        "redis:".to_string(),
        "  mode: sentinel".to_string(),
        format!("  urls: [{:?}]", sentinel.url()),
        "  sentinel_master: certgate-test".to_string(),
        "cache:".to_string(),
        "  ttl: 60s".to_string(),
    ];
    let prepared = prepared_with(&redis_block).await;
    let (a, b, admin_a) = two_instances(&prepared).await;

    let before = prepared.pki.client("before");
    admin_a.revoke(&before.serial).await;
    let on_master: i64 = master.cmd(&["EXISTS", &format!("certgate:revoked:{}", before.serial)]);
    assert_eq!(on_master, 1);

    let carol = prepared.pki.client("carol");
    let mut conn_b = RawClient::new(b.listen, &prepared.pki.server_ca.der, Some(&carol))
        .connect()
        .await
        .expect("handshake")
        .into_http1()
        .await;
    assert_eq!(conn_b.get("/app/1").await.status, 200);

    // Load on B through the failover: identities cached before it must never be refused
    // (cache.ttl is 60 s), and the certificate revoked before it never let through.
    let stop = tokio::sync::watch::channel(false).0;
    let mut load = Vec::new();
    let cached: Vec<Leaf> = (0..4)
        .map(|i| prepared.pki.client(&format!("cached{i}")))
        .chain([before.clone()])
        .collect();
    for leaf in cached {
        let mut conn = RawClient::new(b.listen, &prepared.pki.server_ca.der, Some(&leaf))
            .connect()
            .await
            .expect("handshake")
            .into_http1()
            .await;
        let want = if leaf.serial == before.serial {
            403
        } else {
            200
        };
        assert_eq!(conn.get("/app/warm").await.status, want);
        let stop = stop.subscribe();
        load.push(tokio::spawn(async move {
            let mut answers = (0usize, Vec::new());
            while !*stop.borrow() {
                let Some(r) = conn.get_or_closed("/app/load").await else {
                    // A connection of the revoked certificate, closed when the store
                    // came back and every open connection was checked again.
                    if want != 403 {
                        answers.1.push(0);
                    }
                    break;
                };
                let status = r.status;
                answers.0 += 1;
                if status != want {
                    answers.1.push(status);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (want, answers)
        }));
    }

    sentinel.failover("certgate-test");
    wait_until("sentinel promoted a replica", STEP, || {
        sentinel
            .master_port("certgate-test")
            .is_some_and(|p| p != master.port)
    });
    let promoted = sentinel.master_port("certgate-test");
    let new_master = [&replica, &replica2]
        .into_iter()
        .find(|r| Some(r.port) == promoted)
        .expect("the promoted node is one of the replicas");
    wait_until("the new master accepts writes", STEP, || {
        let info: String = new_master.cmd(&["INFO", "replication"]);
        info.contains("role:master")
    });

    // The first writes after the switch may meet the old master (now read-only) or a
    // dropped connection: the admin API answers 5xx and the gateway resolves the master
    // again. Retry within a bound.
    let failed_over = Instant::now();
    let deadline = failed_over + STEP;
    loop {
        let r = admin_a
            .post(
                &format!("/v1/certificates/{}/revoke", carol.serial),
                Some(serde_json::json!({"reason": "keyCompromise"})),
            )
            .await;
        if (200..300).contains(&r.status) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revoke never succeeded after the failover: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "first successful write {:?} after sentinel reported the new master",
        failed_over.elapsed()
    );
    let on_new_master: i64 =
        new_master.cmd(&["EXISTS", &format!("certgate:revoked:{}", carol.serial)]);
    assert_eq!(
        on_new_master, 1,
        "the revocation did not land on the new master"
    );
    // Its CRL index entry too, and the one from before the failover.
    for serial in [&carol.serial, &before.serial] {
        let score: Option<String> =
            new_master.cmd(&["ZSCORE", "certgate:index:revoked", serial.as_str()]);
        assert!(score.is_some(), "{serial} is missing from the CRL index");
    }
    stop.send_replace(true);
    for task in load {
        let (want, (sent, wrong)) = within("load task", task).await.expect("load task");
        assert!(sent > 0);
        assert!(
            wrong.is_empty(),
            "a cached identity (expected {want}) got {wrong:?} during the failover ({sent} requests)"
        );
    }

    // B refuses carol on its open connection (it may first answer 503 while it finds the
    // new master, never 200 after the bound).
    until_status(&mut conn_b, "/app/2", 403, &[200, 503], STEP).await;
    // And the revocation from before the failover survived it.
    let mut c = RawClient::new(b.listen, &prepared.pki.server_ca.der, Some(&before))
        .connect()
        .await
        .expect("handshake")
        .into_http1()
        .await;
    until_status(&mut c, "/app/3", 403, &[503], STEP).await;

    // Propagation after the failover, timed like before it.
    let dave = prepared.pki.client("dave");
    let mut conn_d = RawClient::new(b.listen, &prepared.pki.server_ca.der, Some(&dave))
        .connect()
        .await
        .expect("handshake")
        .into_http1()
        .await;
    until_status(&mut conn_d, "/app/4", 200, &[503], STEP).await;
    admin_a.revoke(&dave.serial).await;
    until_status(&mut conn_d, "/app/5", 403, &[200], PROPAGATION).await;

    a.shutdown().await;
    b.shutdown().await;
    drop(sentinel);
}

/// A gateway setup on `cluster` with `cache.ttl: 60s`.
async fn cluster_prepared(cluster: &RedisCluster) -> support::Prepared {
    let urls = cluster
        .urls()
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    prepared_with(&[
        "redis:".to_string(),
        "  mode: cluster".to_string(),
        format!("  urls: [{urls}]"),
        "cache:".to_string(),
        "  ttl: 60s".to_string(),
    ])
    .await
}

/// Two gateway instances A and B from the same files, and A's admin API.
async fn two_instances(prepared: &support::Prepared) -> (Gateway, Gateway, support::Admin) {
    let config = prepared.load_config();
    let a = within("start A", certgate::app::start(config.clone()))
        .await
        .expect("start A");
    let b = within("start B", certgate::app::start(config))
        .await
        .expect("start B");
    let admin = support::Admin::new(a.admin, &prepared.token);
    (a, b, admin)
}

/// A gateway setup whose `state:` section is `backend: redis` plus `redis_block` (a whole
/// `redis:` block, e.g. for sentinel or cluster mode, and any `cache:` lines).
async fn prepared_with(redis_block: &[String]) -> support::Prepared {
    let options = Options {
        extra_state: redis_block.to_vec(),
        redis_url: None,
        ..Options::default()
    };
    let prepared = support::Prepared::new(options).await;
    // backend: redis without the standalone url line.
    let yaml = prepared.yaml().replace(
        "  backend: embedded\n  path: data/certgate.db\n",
        "  backend: redis\n",
    );
    std::fs::write(&prepared.config_path, yaml).expect("write config");
    prepared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_revocations_and_resets_reach_another_instance() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    // A long TTL: only pub/sub can explain a refusal within a second.
    let prepared = cluster_prepared(&cluster).await;
    let (a, b, admin_a) = two_instances(&prepared).await;

    // Enough serials that the records spread over the three masters.
    let mut nodes_used = std::collections::HashSet::new();
    let mut latencies = Vec::new();
    for i in 0..12 {
        let leaf = prepared.pki.client(&format!("user{i}"));
        let mut conn = open(b.listen, &prepared.pki.server_ca.der, &leaf).await;
        until_status(&mut conn, "/app/before", 200, &[503], STEP).await;

        admin_a.revoke(&leaf.serial).await;
        let revoked = Instant::now();
        until_status(&mut conn, "/app/after", 403, &[200], PROPAGATION).await;
        latencies.push(revoked.elapsed());
        let key = format!("certgate:revoked:{}", leaf.serial);
        let node = cluster.node_for(&key);
        let exists: i64 = node.cmd(&["EXISTS", &key]);
        assert_eq!(exists, 1, "{key} is not on the node serving its slot");
        nodes_used.insert(node.port);
    }
    assert!(
        nodes_used.len() > 1,
        "every revocation landed on one node; the test does not exercise the cluster"
    );
    latencies.sort();
    eprintln!(
        "cluster: revocation propagation A -> B: p50 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        latencies[latencies.len() - 1]
    );

    // A reset travels the same way, and the account's keys share one slot.
    let bob = prepared.pki.enrolled("bob", 1);
    let mut conn = open(b.listen, &prepared.pki.server_ca.der, &bob).await;
    assert_eq!(conn.get("/app/bob").await.status, 200);
    admin_a.reset("bob").await;
    until_status(&mut conn, "/app/bob", 403, &[200], PROPAGATION).await;
    let generation: String =
        cluster
            .node_for("certgate:acct:bob")
            .cmd(&["HGET", "certgate:acct:bob", "generation"]);
    assert_eq!(generation, "2");

    a.shutdown().await;
    b.shutdown().await;
}

/// A Cluster master killed under load: its replica takes over; identities cached before
/// never get refused, the certificate revoked before is never let through, and revocations
/// after the failover reach the other instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_master_failover_under_load() {
    let Some(mut cluster) = RedisCluster::start_with_replicas(1) else {
        return;
    };
    let prepared = cluster_prepared(&cluster).await;
    let (a, b, admin_a) = two_instances(&prepared).await;
    let ca = prepared.pki.server_ca.der.clone();

    let revoked = prepared.pki.client("revoked");
    admin_a.revoke(&revoked.serial).await;
    let stop = tokio::sync::watch::channel(false).0;
    let mut load = Vec::new();
    let leaves: Vec<Leaf> = (0..6)
        .map(|i| prepared.pki.client(&format!("cached{i}")))
        .chain([revoked.clone()])
        .collect();
    for leaf in leaves {
        let mut conn = open(b.listen, &ca, &leaf).await;
        let want = if leaf.serial == revoked.serial {
            403
        } else {
            200
        };
        until_status(&mut conn, "/app/warm", want, &[503], STEP).await;
        let stop = stop.subscribe();
        load.push(tokio::spawn(async move {
            let (mut sent, mut wrong) = (0usize, Vec::new());
            while !*stop.borrow() {
                let Some(r) = conn.get_or_closed("/app/load").await else {
                    // A connection of the revoked certificate, closed when the store
                    // came back and every open connection was checked again.
                    if want != 403 {
                        wrong.push(0);
                    }
                    break;
                };
                let status = r.status;
                sent += 1;
                if status != want {
                    wrong.push(status);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (want, sent, wrong)
        }));
    }

    // The slot markers are written once, in the background, right after the first start;
    // a failover in the middle of that clogs the cluster connection with marker writes to
    // the dead node for a while (see README, Cluster), which is not what this test is about.
    wait_until(
        "the slot markers are written",
        Duration::from_secs(30),
        || {
            cluster.node_for("certgate:meta").cmd::<i64>(&[
                "HEXISTS",
                "certgate:meta",
                "slots_marked_at",
            ]) == 1
        },
    );
    // Kill the master serving the revoked record, and wait for its replica to take over.
    let key = format!("certgate:revoked:{}", revoked.serial);
    let master_port = cluster.node_for(&key).port;
    let replica_port = cluster.replica_of(master_port).port;
    cluster
        .nodes
        .iter_mut()
        .find(|n| n.port == master_port)
        .expect("the master")
        .kill();
    let killed = Instant::now();
    wait_until(
        "the replica serves the slot",
        Duration::from_secs(30),
        || {
            cluster.nodes.iter().filter(|n| n.is_running()).all(|n| {
                n.cmd::<String>(&["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            }) && cluster.node_for(&key).port == replica_port
        },
    );
    let promoted = killed.elapsed();

    // After the failover: a new revocation on A reaches B (writes may fail while the
    // cluster client finds the new topology: retried within a bound).
    let late = prepared.pki.client("late");
    // Bounds are generous: on a loaded machine the cluster client takes seconds to learn
    // the new topology and to subscribe again (the figures are printed).
    let settle = Duration::from_secs(20);
    let mut conn = open(b.listen, &ca, &late).await;
    until_status(&mut conn, "/app/before", 200, &[503], settle).await;
    // Writes may fail for a while after the failover (the cluster client's calls to the
    // slots that moved time out until it has the new topology; sometimes for tens of
    // seconds on this machine): retried, and the time printed.
    let writes_from = Instant::now();
    let deadline = writes_from + Duration::from_secs(90);
    loop {
        let r = admin_a
            .post(&format!("/v1/certificates/{}/revoke", late.serial), None)
            .await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revoke after the failover: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let writes_back = writes_from.elapsed();
    let revoked_at = Instant::now();
    until_status(&mut conn, "/app/after", 403, &[200], settle).await;
    let spread = revoked_at.elapsed();

    stop.send_replace(true);
    let mut total = 0;
    for task in load {
        let (want, sent, wrong) = within("load task", task).await.expect("load task");
        total += sent;
        assert!(
            wrong.is_empty(),
            "a cached identity (expected {want}) got {wrong:?} during the failover"
        );
    }
    eprintln!(
        "cluster failover: replica serving {promoted:?} after the kill; {total} cached \
         requests answered as before, none refused; writes accepted again {writes_back:?} \
         after the failover; the first revocation after it reached B in {spread:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// What Redis sees per gateway request: a bounded loopback load over a fixed set of
/// certificates, counted with `INFO commandstats`. Prints the figures; asserts only that a
/// cache hit costs no Redis call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_load_per_request() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ttl = Duration::from_secs(2);
    let h = Harness::with(redis_options(&redis.url(), &["cache:", "  ttl: 2s"])).await;
    let certs = 16;
    let leaves: Vec<Leaf> = (0..certs).map(|i| h.pki.client(&format!("u{i}"))).collect();
    let mut conns = Vec::new();
    for leaf in &leaves {
        conns.push(open(h.listen(), &h.pki.server_ca.der, leaf).await);
    }

    // Hits only: warm every entry, then a burst well inside the TTL.
    for c in conns.iter_mut() {
        assert_eq!(c.get("/warm").await.status, 200);
    }
    let reads_before = read_calls(&redis);
    let burst_started = Instant::now();
    let mut burst = 0;
    while burst_started.elapsed() < ttl / 4 {
        for c in conns.iter_mut() {
            assert_eq!(c.get("/hit").await.status, 200);
            burst += 1;
        }
    }
    let hit_reads = read_calls(&redis) - reads_before;
    if burst_started.elapsed() < ttl {
        assert_eq!(
            hit_reads, 0,
            "{burst} cache hits made {hit_reads} Redis reads"
        );
    }

    // Sustained load across several TTLs.
    let before = redis.command_calls();
    let started = Instant::now();
    let mut requests = 0u64;
    while started.elapsed() < ttl * 3 {
        for c in conns.iter_mut() {
            assert_eq!(c.get("/load").await.status, 200);
            requests += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = redis.command_calls();
    let delta = |name: &str| {
        let get = |v: &[(String, u64)]| {
            v.iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| *c)
                .unwrap_or(0)
        };
        get(&after) - get(&before)
    };
    let total: u64 =
        after.iter().map(|(_, c)| c).sum::<u64>() - before.iter().map(|(_, c)| c).sum::<u64>() - 1; // the INFO call itself
    eprintln!(
        "redis load: {requests} requests in {elapsed:.2}s ({:.0} req/s) over {certs} \
         certificates, state.cache.ttl {ttl:?}: {total} redis commands ({:.1}/s, {:.5} per \
         request; hmget {} hgetall {} ping {}); expected ≈ certs × 2 lookups × 2 commands / ttl \
         + probe = {:.1}/s",
        requests as f64 / elapsed,
        total as f64 / elapsed,
        total as f64 / requests as f64,
        delta("hmget"),
        delta("hgetall"),
        delta("ping"),
        certs as f64 * 4.0 / ttl.as_secs_f64()
    );
    h.shutdown().await;
}

/// Calls of the read commands a lookup makes.
fn read_calls(redis: &RedisServer) -> u64 {
    redis
        .command_calls()
        .iter()
        .filter(|(n, _)| n == "hmget")
        .map(|(_, c)| c)
        .sum()
}
