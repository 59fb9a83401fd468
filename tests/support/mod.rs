//! Shared harness for the integration tests: a PKI generated at test time ([`pki`]), an
//! upstream that echoes what it receives ([`upstream`]), the gateway started from a real
//! config file ([`gateway`]) and clients for the data plane and the admin API ([`client`]).
//!
//! Nothing here uses a fixed port or sleeps for a guessed time: everything binds
//! `127.0.0.1:0`, and every wait is bounded by [`STEP`] so a hang fails the test.

// Each test binary uses a different part of the harness.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod client;
pub mod enroll;
pub mod gateway;
pub mod pki;
pub mod process;
pub mod redis;
pub mod upstream;
pub mod wsgi;

use std::future::Future;
use std::time::Duration;

pub use client::{Admin, H1, RawClient, Resp};
pub use gateway::{Harness, Options, Prepared, closed_port};
pub use pki::{Leaf, LeafSpec, Pki};
pub use upstream::{Echo, Upstream};

/// The bound on any single wait (a request, a handshake, a read).
pub const STEP: Duration = Duration::from_secs(15);

/// With `CERTGATE_TEST_LOG` set (a `tracing` filter such as `certgate=debug`), the
/// gateways a test starts log to stderr, which the test runner shows for a failed test.
pub fn test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("CERTGATE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

/// Awaits `fut`, failing the test if it takes longer than [`STEP`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

/// `GET url` with extra request headers, bounded by [`STEP`].
pub async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = within(&format!("GET {url}"), req.send())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    Resp::from_reqwest(resp).await
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the wall clock is past `t` (a certificate's `notAfter` or `notBefore`).
pub async fn wait_until_past(t: time::OffsetDateTime) {
    loop {
        let now = time::OffsetDateTime::now_utc();
        if now > t {
            return;
        }
        let left = (t - now).unsigned_abs() + Duration::from_millis(50);
        assert!(left < Duration::from_secs(60), "refusing to wait {left:?}");
        tokio::time::sleep(left).await;
    }
}

/// The value of one series (exactly as named, labels included) on a metrics listener.
pub async fn metric(metrics: std::net::SocketAddr, series: &str) -> f64 {
    let text = within(
        "GET /metrics",
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{metrics}/metrics"))
            .send(),
    )
    .await
    .expect("metrics")
    .text()
    .await
    .expect("metrics body");
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series)
                .then(|| v.trim().parse::<f64>().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
}

/// The value of one sample in Prometheus text, e.g.
/// `certgate_enrollments_total{result="success"}`; `None` when absent.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
