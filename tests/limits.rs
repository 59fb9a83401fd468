//! Connection limits: `limits.max_connections`, `limits.idle_timeout`, `limits.send_timeout` and
//! `limits.max_connection_age`, over real TLS connections.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::client::End;
use support::{Harness, LeafSpec, Options, STEP, sample, within};

fn with_limits(lines: &[&str]) -> Options {
    Options {
        header_read_timeout: "5s",
        extra_limits: lines.iter().map(|l| l.to_string()).collect(),
        ..Options::default()
    }
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once_and_counted() {
    let h = Harness::with(with_limits(&["max_connections: 2"])).await;
    let alice = h.pki.client_ca.issue(&LeafSpec::account("alice"));
    let raw = h.raw(Some(&alice));
    let mut first = within("connect", raw.connect())
        .await
        .expect("first")
        .into_http1()
        .await;
    let mut second = within("connect", raw.connect())
        .await
        .expect("second")
        .into_http1()
        .await;
    assert_eq!(first.get("/app").await.status, 200);
    assert_eq!(second.get("/app").await.status, 200);

    // The third is closed without a TLS handshake.
    let third = h.raw(Some(&alice)).get_or_refused("/app").await;
    assert!(
        third.is_err(),
        "a third connection was served: {:?}",
        third.map(|r| r.status)
    );
    let m = h.metrics_text().await;
    assert!(
        sample(&m, "certgate_connections_refused_total").unwrap_or(0.0) >= 1.0,
        "{m}"
    );

    // Room again once one closes.
    drop(first);
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(r) = h.raw(Some(&alice)).get_or_refused("/app").await {
            assert_eq!(r.status, 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        second.get("/app").await.status,
        200,
        "the open connection kept working"
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let h = Harness::with(with_limits(&["idle_timeout: 1s"])).await;
    let mut conn = within("connect", h.raw(None).connect())
        .await
        .expect("handshake");
    conn.write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let started = Instant::now();
    let read = conn.read_until_close(STEP).await;
    assert!(
        String::from_utf8_lossy(&read.bytes).starts_with("HTTP/1.1 200"),
        "the request was answered first"
    );
    assert!(
        !matches!(read.end, End::Timeout),
        "the idle connection was never closed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before idle_timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn old_connection_is_closed_gracefully_after_max_connection_age() {
    let h = Harness::with(with_limits(&["max_connection_age: 1s"])).await;
    let alice = h.pki.client_ca.issue(&LeafSpec::account("alice"));
    let conn = within("connect", h.raw(Some(&alice)).connect())
        .await
        .expect("handshake");
    let mut h1 = conn.into_http1().await;
    assert_eq!(h1.get("/app").await.status, 200);
    let deadline = Instant::now() + STEP;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match h1.send("GET", "/app", &[]).await {
            // Answered (before the age was reached, or the last exchange before closing).
            Ok(r) => assert_eq!(r.status, 200),
            // Closed by the gateway: the age limit worked.
            Err(_) => break,
        }
        assert!(
            Instant::now() < deadline,
            "the connection outlived max_connection_age"
        );
    }
}

const UPGRADE: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Opens a WebSocket-style tunnel to the test upstream's echo at `path`; `None` when the
/// answer is not a 101.
async fn tunnel(
    h: &Harness,
    leaf: Option<&support::Leaf>,
    path: &str,
) -> Option<support::client::TlsConn> {
    let mut conn = within("connect", h.raw(leaf).connect()).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}");
    conn.write_all(req.as_bytes()).await.ok()?;
    let head = conn.read_head(STEP).await;
    String::from_utf8_lossy(&head.bytes)
        .to_ascii_lowercase()
        .starts_with("http/1.1 101")
        .then_some(conn)
}

/// An upgraded tunnel keeps its place in `limits.max_connections` and in
/// `certgate_connections_active` until it closes.
#[tokio::test]
async fn tunnels_count_against_the_connection_limit() {
    let h = Harness::with(with_limits(&["max_connections: 3"])).await;
    let alice = h.pki.client("alice");
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        tunnels.push(tunnel(&h, Some(&alice), "/ws/chat").await.expect("101"));
    }
    let m = h.metrics_text().await;
    assert_eq!(sample(&m, "certgate_connections_active"), Some(3.0), "{m}");
    let fourth = h.raw(Some(&alice)).get_or_refused("/app").await;
    assert!(
        fourth.is_err(),
        "a connection beyond the limit was served while 3 tunnels were open"
    );
    // Closing a tunnel gives its place back.
    drop(tunnels.pop());
    let deadline = Instant::now() + STEP;
    while h.raw(Some(&alice)).get_or_refused("/app").await.is_err() {
        assert!(Instant::now() < deadline, "no room after a tunnel closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tunnel without a byte either way for `limits.idle_timeout` is closed; one in use is
/// not.
#[tokio::test]
async fn an_idle_tunnel_is_closed_after_idle_timeout() {
    let h = Harness::with(with_limits(&["idle_timeout: 1s"])).await;
    let alice = h.pki.client("alice");
    let mut busy = tunnel(&h, Some(&alice), "/ws/busy").await.expect("101");
    let mut idle = tunnel(&h, Some(&alice), "/ws/idle").await.expect("101");
    // Keep one busy for 2 s: an echo every 300 ms.
    for _ in 0..7 {
        busy.write_all(b"ping").await.expect("busy tunnel open");
        let mut buf = [0u8; 16];
        let n = within(
            "echo",
            tokio::io::AsyncReadExt::read(&mut busy.stream, &mut buf),
        )
        .await
        .expect("read");
        assert!(n > 0, "the busy tunnel was closed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = idle.read_until_close(STEP).await;
    assert!(
        matches!(out.end, End::Eof | End::Error(_)),
        "the idle tunnel was still open: {:?}",
        out.end
    );
}

/// Without `routes.public_upgrades`, a request on a public route cannot open a tunnel (it
/// would carry a client's bytes to the app without a certificate); with it, it can.
#[tokio::test]
async fn public_routes_do_not_upgrade_unless_allowed() {
    let public = |allowed: bool| Options {
        public: vec!["/public".into(), "/ws-public".into()],
        public_upgrades: allowed,
        ..Options::default()
    };
    let h = Harness::with(public(false)).await;
    let _ = tunnel(&h, None, "/ws-public/chat").await;
    let seen = h.upstream.seen_with_prefix("/ws-public");
    assert_eq!(seen.len(), 1);
    assert!(
        !seen[0]
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("upgrade")),
        "the upgrade reached the upstream: {:?}",
        seen[0].headers
    );
    let h = Harness::with(public(true)).await;
    assert!(tunnel(&h, None, "/ws-public/chat").await.is_some());
}

/// A client that stops reading a large response (its socket buffer full, nothing moving)
/// does not hold the connection, and the upstream connection behind it, for long after
/// `limits.idle_timeout`; a client that keeps reading is not cut.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped() {
    let h = Harness::with(with_limits(&["idle_timeout: 2s"])).await;
    let alice = h.pki.client("alice");
    let request = b"GET /stream?bytes=4000000000 HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut stalled = within("connect", h.raw(Some(&alice)).connect())
        .await
        .expect("handshake");
    stalled.write_all(request).await.expect("write");
    let mut reader = within("connect", h.raw(Some(&alice)).connect())
        .await
        .expect("handshake");
    reader.write_all(request).await.expect("write");
    // The reader keeps reading in its own task (a download); the stalled one never reads.
    let stop = Arc::new(AtomicBool::new(false));
    let reading = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                let n = within(
                    "read",
                    tokio::io::AsyncReadExt::read(&mut reader.stream, &mut buf),
                )
                .await
                .expect("the reader's connection stays open");
                assert!(n > 0, "the reader was cut");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let started = Instant::now();
    let closed_after = loop {
        let m = h.metrics_text().await;
        if sample(&m, "certgate_connections_active") == Some(1.0) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the stalled connection was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("stalled reader dropped after {closed_after:?}");
    stop.store(true, Ordering::Relaxed);
    within("reader", reading)
        .await
        .expect("the reader kept its connection");
    drop(stalled);
}

/// One HTTP/2 connection that asks for `streams` responses and never opens its
/// flow-control window (`SETTINGS_INITIAL_WINDOW_SIZE = 0`, no WINDOW_UPDATE), answering
/// PINGs all the while. Resolves when the gateway has closed the connection.
async fn stalled_h2(
    h: &Harness,
    identity: Option<&support::Leaf>,
    path: &str,
    streams: usize,
) -> tokio::task::JoinHandle<Instant> {
    let raw = support::client::RawClient::build(
        h.listen(),
        &h.pki.server_ca.der,
        identity,
        vec![b"h2".to_vec()],
    );
    let tls = within("connect", raw.connect())
        .await
        .expect("handshake")
        .stream;
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .expect("h2 handshake");
    let ended = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let uri = format!("https://localhost{path}");
    let mut pending = Vec::new();
    let mut client = client;
    for _ in 0..streams {
        client = within("stream slot", client.ready())
            .await
            .expect("a stream slot");
        let req = http::Request::get(&uri).body(()).expect("request");
        let (resp, _) = client.send_request(req, true).expect("send request");
        pending.push(resp);
    }
    // Keeps the client side (and its streams) alive until the connection ends.
    tokio::spawn(async move {
        let _keep = (client, pending);
        ended.await.expect("connection task")
    })
}

/// Issue #10 item 2: clients that set an initial window of 0, open 256 streams each and
/// never send WINDOW_UPDATE, on a public path with 30 KB upstream responses and on
/// `/.certgate/ca.pem` without a certificate. They are dropped after `send_timeout`, the
/// upstream connections their streams pinned are released, and a legitimate client is
/// served throughout.
#[tokio::test]
async fn h2_clients_that_never_open_their_window_are_dropped() {
    let h = Harness::with(Options {
        public: vec!["/public".into(), "/stream".into()],
        ..with_limits(&["send_timeout: 2s", "idle_timeout: 60s"])
    })
    .await;
    let alice = h.pki.client("alice");
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stalled_h2(&h, None, "/stream?bytes=30000", 256).await);
    }
    stalled.push(stalled_h2(&h, None, "/.certgate/ca.pem", 256).await);
    // Every public stream reached the upstream (counted as requests seen: on a slow machine
    // send_timeout may already release the first connections before the last streams
    // arrive).
    support::eventually("the stalled streams reach the upstream", STEP, || {
        h.upstream.seen_with_prefix("/stream").len() >= 3 * 256
    })
    .await;
    let pinned = h.upstream.open_connections();

    // A legitimate client meanwhile, over HTTP/2 with a certificate.
    let client = h.client(Some(&alice));
    let (mut ok, mut failed) = (0, 0);
    let mut ended = Vec::new();
    while !stalled.is_empty() {
        match client.get(h.url("/public/x")).send().await {
            Ok(r) if r.status() == 200 => ok += 1,
            _ => failed += 1,
        }
        for s in std::mem::take(&mut stalled) {
            if s.is_finished() {
                ended.push(s.await.expect("stalled client") - started);
            } else {
                stalled.push(s);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "stalled HTTP/2 connections still open after {:?} (send_timeout 2s): {} of 4 ended",
            started.elapsed(),
            4 - stalled.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "4 stalled h2 connections (1024 streams, {pinned} upstream connections pinned) \
         dropped after {ended:?}; legitimate client: {ok} ok, {failed} failed"
    );
    assert_eq!(
        failed, 0,
        "the legitimate client failed while the attack ran"
    );
    assert!(ok > 0);
    support::eventually("the pinned upstream connections are released", STEP, || {
        h.upstream.open_connections() <= 4
    })
    .await;
    let m = h.metrics_text().await;
    assert!(
        sample(&m, "certgate_connections_active").unwrap_or(0.0) <= 1.0,
        "only the legitimate client's connection is left"
    );
}
