//! Shutdown without dropping traffic, on the real binary and real signals: after SIGTERM
//! the gateway is a lame duck for `shutdown.drain_delay` (`/readyz` 503, the listener still
//! accepting, clients asked to reconnect), then stops accepting and drains; a second
//! signal skips the wait.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::process::start;
use support::{Leaf, Options, Prepared};

fn client(
    p: &Prepared,
    listen: SocketAddr,
    leaf: &Leaf,
    pooled: bool,
    h2: bool,
) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(p.pki.server_ca.cert_pem.as_bytes()).expect("CA");
    let mut b = reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve("localhost", listen)
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .identity(leaf.reqwest_identity());
    if !pooled {
        b = b.pool_max_idle_per_host(0);
    }
    if !h2 {
        b = b.http1_only();
    }
    b.build().expect("client")
}

/// One request's outcome, timed from the signal.
#[derive(Debug, Clone)]
struct Sent {
    /// Milliseconds after the SIGTERM the request was sent (negative: before).
    at_ms: i64,
    result: Result<u16, String>,
    connection_close: bool,
}

async fn readyz(metrics: SocketAddr) -> Option<(u16, String)> {
    let r = reqwest::Client::new()
        .get(format!("http://{metrics}/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_hammering_through_sigterm_sees_no_failed_request() {
    let delay = Duration::from_millis(1500);
    let p = Prepared::new(Options {
        extra: "shutdown:\n  drain_delay: 1500ms\n  timeout: 5s\n".into(),
        ..Options::default()
    })
    .await;
    let alice = p.pki.client("alice");
    let mut gw = start(&p);
    let base = format!("https://localhost:{}", gw.listen.port());
    assert_eq!(readyz(gw.metrics).await.map(|r| r.0), Some(200));

    let signalled: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent: Arc<Mutex<Vec<(&'static str, Sent)>>> = Arc::default();
    // New connections per request (h1 and h2), and one keep-alive client of each.
    let kinds: [(&'static str, bool, bool); 5] = [
        ("new h1", false, false),
        ("new h1", false, false),
        ("new h2", false, true),
        ("kept h1", true, false),
        ("kept h2", true, true),
    ];
    let mut tasks = Vec::new();
    for (kind, pooled, h2) in kinds {
        let c = client(&p, gw.listen, &alice, pooled, h2);
        let (signalled, stop, sent, url) = (
            signalled.clone(),
            stop.clone(),
            sent.clone(),
            format!("{base}/app/hammer"),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let r = c.get(&url).send().await;
                let at_ms = match *signalled.lock().unwrap() {
                    Some(t) if started >= t => started.duration_since(t).as_millis() as i64,
                    Some(t) => -(t.duration_since(started).as_millis() as i64),
                    None => -1_000_000,
                };
                let (result, connection_close) = match r {
                    Ok(r) => {
                        let close = r
                            .headers()
                            .get("connection")
                            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                        let status = r.status().as_u16();
                        match r.bytes().await {
                            Ok(_) => (Ok(status), close),
                            Err(e) => (Err(format!("body: {e:?}")), close),
                        }
                    }
                    Err(e) => (Err(format!("{e:?}")), false),
                };
                sent.lock().unwrap().push((
                    kind,
                    Sent {
                        at_ms,
                        result,
                        connection_close,
                    },
                ));
            }
        }));
    }

    // Load before the signal, then SIGTERM.
    tokio::time::sleep(Duration::from_millis(500)).await;
    *signalled.lock().unwrap() = Some(Instant::now());
    gw.signal(libc::SIGTERM);

    // The lame duck: not ready, still serving.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = readyz(gw.metrics)
        .await
        .expect("/readyz answers in the lame duck");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting_down"), "{body}");

    let code = tokio::task::spawn_blocking(move || {
        let code = gw.wait_exit(Duration::from_secs(15));
        (code, gw)
    })
    .await
    .expect("join");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let (code, gw) = code;
    assert_eq!(code, Some(0), "exit code; log:\n{}", gw.log.lock().unwrap());

    let sent = sent.lock().unwrap().clone();
    // Every request sent before the signal or within the lame duck (less a margin for the
    // time a request takes) was answered 200.
    let window = delay.as_millis() as i64 - 300;
    let in_window: Vec<_> = sent.iter().filter(|(_, s)| s.at_ms < window).collect();
    let failed: Vec<_> = in_window
        .iter()
        .filter(|(_, s)| s.result != Ok(200))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests sent up to {window} ms after SIGTERM failed: {failed:?}\nlog:\n{}",
        failed.len(),
        in_window.len(),
        gw.log.lock().unwrap()
    );
    for kind in ["new h1", "new h2", "kept h1", "kept h2"] {
        let after: Vec<_> = in_window
            .iter()
            .filter(|(k, s)| *k == kind && s.at_ms >= 0)
            .collect();
        assert!(
            after.len() >= 3,
            "{kind}: only {} requests in the lame duck: {sent:?}",
            after.len()
        );
    }
    // Keep-alive HTTP/1.1 clients were asked to reconnect.
    assert!(
        in_window
            .iter()
            .any(|(k, s)| *k == "kept h1" && s.at_ms >= 0 && s.connection_close),
        "no `Connection: close` in the lame duck"
    );
    eprintln!(
        "drain: {} requests, {} within {window} ms after SIGTERM, all answered 200",
        sent.len(),
        in_window.iter().filter(|(_, s)| s.at_ms >= 0).count()
    );
}

#[tokio::test]
async fn a_second_signal_skips_the_lame_duck_wait() {
    let p = Prepared::new(Options {
        extra: "shutdown:\n  drain_delay: 60s\n".into(),
        ..Options::default()
    })
    .await;
    let mut gw = start(&p);
    gw.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = readyz(gw.metrics).await.expect("/readyz in the lame duck");
    assert_eq!(status, 503);
    let second = Instant::now();
    gw.signal(libc::SIGINT);
    let code = tokio::task::spawn_blocking(move || {
        let code = gw.wait_exit(Duration::from_secs(10));
        (code, gw)
    })
    .await
    .expect("join");
    let (code, gw) = code;
    assert_eq!(code, Some(0), "log:\n{}", gw.log.lock().unwrap());
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "exited {:?} after the second signal",
        second.elapsed()
    );
    let log = gw.log.lock().unwrap();
    assert!(log.contains("lame-duck wait skipped"), "{log}");
}

/// `certgate health` (the container health check): 0 while ready, 1 in the lame duck and
/// when nothing answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_readyz() {
    let p = Prepared::new(Options {
        extra: "shutdown:\n  drain_delay: 60s\n".into(),
        ..Options::default()
    })
    .await;
    let gw = start(&p);
    let health = |url: Option<String>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_certgate"));
        cmd.arg("--config").arg(&p.config_path).arg("health");
        if let Some(u) = url {
            cmd.arg("--url").arg(u);
        }
        cmd.env_remove("CERTGATE_CONFIG")
            .output()
            .expect("certgate health")
    };
    let url = format!("http://{}/readyz", gw.metrics);
    let out = tokio::task::block_in_place(|| health(Some(url.clone())));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Without --url, from the config: the harness's metrics.listen is port 0, so the
    // probe finds nothing there and says so.
    let out = tokio::task::block_in_place(|| health(None));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not ready"),
        "{out:?}"
    );
    gw.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = tokio::task::block_in_place(|| health(Some(url.clone())));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("503"),
        "{out:?}"
    );
}
