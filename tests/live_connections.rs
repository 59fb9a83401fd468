//! Open connections follow the decision (README "Open connections"): a revocation, a reset
//! or a passed `notAfter` closes the connections that carry the certificate — upgraded
//! tunnels, idle HTTP/1.1 and HTTP/2 connections — on every instance, within a second of
//! the event; other users' connections stay open; nothing is closed while the store cannot
//! answer. Real TLS clients with certificates made here, a real `redis-server`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use support::client::{End, TlsConn};
use support::redis::RedisServer;
use support::{H1, Harness, Leaf, LeafSpec, Options, RawClient, STEP, metric, within};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

const UPGRADE: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// The close deadline of the contract is 1 s; this is how long a test waits before it
/// calls a connection "left open" (the measured times are printed).
const LEFT_OPEN: Duration = Duration::from_secs(5);

/// A WebSocket-style tunnel through the gateway at `listen` to the test upstream's echo.
async fn tunnel(listen: SocketAddr, ca: &CertificateDer<'static>, leaf: &Leaf) -> TlsConn {
    let mut conn = RawClient::new(listen, ca, Some(leaf))
        .connect()
        .await
        .expect("handshake");
    let req = format!("GET /ws/chat HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}");
    conn.write_all(req.as_bytes()).await.expect("write upgrade");
    let head = conn.read_head(STEP).await;
    let text = String::from_utf8_lossy(&head.bytes).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "upgrade answer: {text:?}");
    assert_echoes(&mut conn).await;
    conn
}

/// Writes through the tunnel and reads the echo back.
async fn assert_echoes(conn: &mut TlsConn) {
    conn.write_all(b"ping")
        .await
        .expect("write into the tunnel");
    let mut got = Vec::new();
    while got.len() < 4 {
        let mut buf = [0u8; 64];
        let n = within("tunnel echo", conn.stream.read(&mut buf))
            .await
            .expect("read the echo");
        assert!(n > 0, "the tunnel was closed");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"ping");
}

/// Waits in the background for the tunnel to be closed by the gateway; resolves to when
/// (or `None` when it stayed open for [`LEFT_OPEN`]).
fn tunnel_end(mut conn: TlsConn) -> JoinHandle<Option<Instant>> {
    tokio::spawn(async move {
        let out = conn.read_until_close(LEFT_OPEN).await;
        matches!(out.end, End::Eof | End::Error(_)).then(Instant::now)
    })
}

/// An HTTP/1.1 connection that served one request and now sits idle.
async fn idle_h1(listen: SocketAddr, ca: &CertificateDer<'static>, leaf: &Leaf) -> H1 {
    let mut conn = connect_h1(listen, ca, leaf).await;
    assert_eq!(conn.get("/app/before").await.status, 200);
    conn
}

fn h1_end(mut conn: H1) -> JoinHandle<Option<Instant>> {
    tokio::spawn(async move { conn.wait_closed(LEFT_OPEN).await.then(Instant::now) })
}

/// An HTTP/2 connection that served one request; resolves to when the gateway ended it
/// and whether a GOAWAY came first.
async fn idle_h2(
    listen: SocketAddr,
    ca: &CertificateDer<'static>,
    leaf: &Leaf,
) -> JoinHandle<Option<Instant>> {
    let raw = RawClient::build(listen, ca, Some(leaf), vec![b"h2".to_vec()]);
    let tls = within("connect", raw.connect())
        .await
        .expect("handshake")
        .stream;
    let (client, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let ended = tokio::spawn(async move {
        let _ = tokio::time::timeout(STEP * 2, conn).await;
        Instant::now()
    });
    let mut client = within("h2 ready", client.ready()).await.expect("ready");
    let req = http::Request::get("https://localhost/app/h2")
        .body(())
        .expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    let resp = within("h2 response", resp).await.expect("response");
    assert_eq!(resp.status(), 200);
    tokio::spawn(async move {
        let _keep = client;
        let at = tokio::time::timeout(LEFT_OPEN, ended).await.ok()?.ok()?;
        Some(at)
    })
}

fn closed_after(what: &str, since: Instant, end: Option<Instant>) -> Duration {
    let at = end.unwrap_or_else(|| panic!("{what}: still open {LEFT_OPEN:?} after the event"));
    at.saturating_duration_since(since)
}

async fn closed_count(metrics: SocketAddr, reason: &str) -> f64 {
    metric(
        metrics,
        &format!("certgate_connections_closed_total{{reason=\"{reason}\"}}"),
    )
    .await
}

/// Two instances on one Redis: alice's tunnel, idle HTTP/1.1 and HTTP/2 connections on
/// instance B are closed when instance A revokes her certificate; bob's tunnel is closed
/// when A resets his account; carol's stays open throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_and_reset_on_one_instance_close_open_connections_on_another() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // A long TTL: only the store's events can explain a close within a second.
    let h = Harness::with(Options {
        redis_url: Some(redis.url()),
        extra_state: vec!["cache:".into(), "  ttl: 60s".into()],
        ..Options::default()
    })
    .await;
    let b = within("start B", certgate::app::start(h.load_config()))
        .await
        .expect("second instance");
    let ca = &h.pki.server_ca.der;
    let (alice, bob, carol) = (
        h.pki.client("alice"),
        h.pki.client("bob"),
        h.pki.client("carol"),
    );
    for r in ["revoked", "reset", "expired", "admin"] {
        assert_eq!(closed_count(b.metrics, r).await, 0.0, "{r} at start");
    }

    let alice_tunnel = tunnel_end(tunnel(b.listen, ca, &alice).await);
    let alice_h1 = h1_end(idle_h1(b.listen, ca, &alice).await);
    let alice_h2 = idle_h2(b.listen, ca, &alice).await;
    let bob_tunnel = tunnel_end(tunnel(b.listen, ca, &bob).await);
    let mut carol_tunnel = tunnel(b.listen, ca, &carol).await;

    let revoked = Instant::now();
    h.admin().revoke(&alice.serial).await;
    let t = closed_after("alice's tunnel", revoked, alice_tunnel.await.unwrap());
    let c1 = closed_after("alice's HTTP/1.1", revoked, alice_h1.await.unwrap());
    let c2 = closed_after("alice's HTTP/2", revoked, alice_h2.await.unwrap());
    println!(
        "from the revoke call on A to the close on B: tunnel {t:?}, HTTP/1.1 {c1:?}, HTTP/2 {c2:?}"
    );
    assert_echoes(&mut carol_tunnel).await;
    assert!(!bob_tunnel.is_finished(), "bob's tunnel was closed too");

    let reset = Instant::now();
    h.admin().reset("bob").await;
    let t = closed_after("bob's tunnel", reset, bob_tunnel.await.unwrap());
    println!("from the reset call on A to the close of bob's tunnel on B: {t:?}");
    assert_echoes(&mut carol_tunnel).await;

    assert_eq!(closed_count(b.metrics, "revoked").await, 3.0);
    assert_eq!(closed_count(b.metrics, "reset").await, 1.0);
    // A closed nothing: it had no connection of theirs.
    assert_eq!(closed_count(h.metrics_addr(), "revoked").await, 0.0);
    // New connections of the revoked certificate are refused as before.
    let mut again = connect_h1(b.listen, ca, &alice).await;
    assert_eq!(again.get("/app/after").await.status, 403);
}

/// A new HTTP/1.1 connection with `leaf`.
async fn connect_h1(listen: SocketAddr, ca: &CertificateDer<'static>, leaf: &Leaf) -> H1 {
    RawClient::new(listen, ca, Some(leaf))
        .connect()
        .await
        .expect("handshake")
        .into_http1()
        .await
}

/// With Redis stopped (SIGSTOP) for longer than `cache.ttl`, nothing is closed on a guess;
/// once it answers again the connection is still there and still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_outage_closes_nothing() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let h = Harness::with(Options {
        redis_url: Some(redis.url()),
        extra_state: vec![
            "  timeout: 300ms".into(),
            "cache:".into(),
            "  ttl: 1s".into(),
        ],
        ..Options::default()
    })
    .await;
    let ca = &h.pki.server_ca.der;
    let dave = h.pki.client("dave");
    let mut t = tunnel(h.listen(), ca, &dave).await;
    let mut idle = idle_h1(h.listen(), ca, &dave).await;
    redis.pause();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_echoes(&mut t).await;
    redis.resume();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_echoes(&mut t).await;
    let deadline = Instant::now() + STEP;
    loop {
        let r = idle.get("/app/after").await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            Instant::now() < deadline,
            "still 503 after the store came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in ["revoked", "reset", "expired"] {
        assert_eq!(closed_count(h.metrics_addr(), r).await, 0.0, "{r}");
    }
}

/// A connection whose certificate's notAfter passes is closed (reason `expired`).
#[tokio::test]
async fn a_connection_is_closed_when_its_certificate_expires() {
    let h = Harness::start().await;
    let ca = &h.pki.server_ca.der;
    let erin = h
        .pki
        .client_ca
        .issue(&LeafSpec::account("erin").expiring_in(3));
    let idle = idle_h1(h.listen(), ca, &erin).await;
    let t = tunnel_end(tunnel(h.listen(), ca, &erin).await);
    let h1 = h1_end(idle);
    let (t, h1) = (t.await.unwrap(), h1.await.unwrap());
    assert!(
        t.is_some() && h1.is_some(),
        "open after notAfter: {t:?} {h1:?}"
    );
    assert_eq!(closed_count(h.metrics_addr(), "expired").await, 2.0);
}

/// Runs `certgate admin --url … --token-file … ARGS` (off the runtime's threads).
async fn cli(
    admin: SocketAddr,
    token_file: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_certgate"));
    cmd.args(["admin", "--url", &format!("http://{admin}")])
        .arg("--token-file")
        .arg(token_file)
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run certgate")
}

/// `GET /v1/accounts/{id}/connections` lists this instance's connections of the account;
/// `POST …/connections/close` closes them; `certgate admin connections` prints the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_and_closes_an_accounts_connections() {
    let h = Harness::start().await;
    let ca = &h.pki.server_ca.der;
    let frank = h.pki.client("frank");
    let grace = h.pki.client("grace");
    let mut idle = idle_h1(h.listen(), ca, &frank).await;
    assert_eq!(idle.get("/app/second").await.status, 200);
    let frank_tunnel = tunnel(h.listen(), ca, &frank).await;
    let mut grace_tunnel = tunnel(h.listen(), ca, &grace).await;

    let r = h.admin().get("/v1/accounts/frank/connections").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["account"], "frank");
    assert!(v["instance"].as_str().is_some_and(|s| s.contains("pid")));
    let list = v["connections"].as_array().expect("list");
    assert_eq!(list.len(), 2, "{v}");
    let h1 = list
        .iter()
        .find(|c| c["protocol"] == "http/1.1")
        .expect("the HTTP/1.1 connection");
    assert_eq!(h1["requests"], 2);
    assert_eq!(h1["serial"], frank.serial.as_str());
    assert!(h1["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(h1["opened_at"].as_str().unwrap().ends_with('Z'));
    assert!(list.iter().any(|c| c["protocol"] == "upgraded"), "{v}");

    // The CLI, as an operator runs it.
    let token_file = h.dir.path().join("secrets/admin-token");
    let out = cli(h.admin_addr(), &token_file, &["connections", "frank"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Open connections of account frank"), "{text}");
    assert!(
        text.contains(&frank.serial) && text.contains("upgraded"),
        "{text}"
    );

    let ended = (tunnel_end(frank_tunnel), h1_end(idle));
    let out = cli(
        h.admin_addr(),
        &token_file,
        &["connections", "frank", "--close"],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Closed 2 open connection(s) of account frank"),
        "{text}"
    );
    assert!(ended.0.await.unwrap().is_some(), "frank's tunnel is open");
    assert!(ended.1.await.unwrap().is_some(), "frank's HTTP/1.1 is open");
    assert_echoes(&mut grace_tunnel).await;
    assert_eq!(closed_count(h.metrics_addr(), "admin").await, 2.0);
    let r = h.admin().get("/v1/accounts/frank/connections").await;
    assert_eq!(r.json()["connections"].as_array().map(Vec::len), Some(0));

    // Bad input: an unknown field, an invalid serial, no token.
    let r = h
        .admin()
        .post(
            "/v1/accounts/grace/connections/close",
            Some(serde_json::json!({"serail": "ab"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = h
        .admin()
        .post(
            "/v1/accounts/grace/connections/close",
            Some(serde_json::json!({"serial": "not hex"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = h
        .admin()
        .send_with(
            reqwest::Method::GET,
            "/v1/accounts/grace/connections",
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    assert_echoes(&mut grace_tunnel).await;
}
