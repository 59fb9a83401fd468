//! Connection limits: `limits.max_connections`, `limits.idle_timeout` and
//! `limits.max_connection_age`, over real TLS connections.

mod support;

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
