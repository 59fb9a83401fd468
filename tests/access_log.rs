//! The access log as an operator reads it: the real binary with `log.format: json` and
//! `log.access: true`, one flat JSON line per request with the fields the README lists,
//! and the request id the application received.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::process::start;
use support::{Options, Prepared};

/// The access lines logged so far.
fn access_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "certgate::access" && v["message"] == "request")
        .collect()
}

async fn wait_lines(gw: &support::process::Running, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + support::STEP;
    loop {
        let lines = access_lines(&gw.log());
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP/1.1 client of the gateway at `listen` with `leaf`'s certificate.
fn h1_client(
    p: &Prepared,
    leaf: &support::pki::Leaf,
    listen: std::net::SocketAddr,
) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(p.pki.server_ca.cert_pem.as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve("localhost", listen)
        .no_proxy()
        .http1_only()
        .identity(leaf.reqwest_identity())
}

/// A gateway's files with `log.access: true` and `more` (YAML lines of the log section)
/// added to the harness's log section.
async fn with_access_log(more: &str) -> Prepared {
    let p = Prepared::new(Options {
        extra: "shutdown:\n  drain_delay: 0s\n".into(),
        ..Options::default()
    })
    .await;
    let yaml = std::fs::read_to_string(&p.config_path).unwrap().replace(
        "log:\n  level: warn\n",
        &format!("log:\n  level: warn\n{more}  access: true\n"),
    );
    std::fs::write(&p.config_path, yaml).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_lines_are_flat_and_name_the_request() {
    let p = with_access_log("  format: json\n").await;
    let alice = p.pki.client("alice");
    let gw = start(&p);
    let client = h1_client(&p, &alice, gw.listen)
        .user_agent("access-log-test/1.0")
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", gw.listen.port());

    // Allowed, with a body and a query that must not be logged; the client's own
    // request id is replaced (headers.request_id: generate).
    let r = client
        .post(format!("{base}/app/orders?token=secret-value"))
        .header("x-request-id", "client-chosen")
        .body(vec![b'x'; 1234])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let returned = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let echoed: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let seen: Vec<String> = echoed["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case("x-request-id"))
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        seen,
        vec![returned.clone()],
        "the app got one id, the one returned"
    );
    assert_ne!(returned, "client-chosen");
    assert_eq!(returned.len(), 32);

    // Refused without a certificate.
    let anon = reqwest::Client::builder()
        .tls_certs_only([
            reqwest::Certificate::from_pem(p.pki.server_ca.cert_pem.as_bytes()).unwrap(),
        ])
        .resolve("localhost", gw.listen)
        .no_proxy()
        .build()
        .unwrap();
    let r = anon
        .get(format!("{base}/app/private"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let lines = wait_lines(&gw, 2).await;
    assert_eq!(lines.len(), 2, "log:\n{}", gw.log());
    let ok = &lines[0];
    // Flat: the fields are at the top level, not under "fields".
    assert!(ok.get("fields").is_none(), "{ok}");
    assert_eq!(ok["request_id"], returned.as_str());
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["path"], "/app/orders");
    assert!(
        !ok.to_string().contains("secret-value"),
        "query logged: {ok}"
    );
    assert_eq!(
        ok["host"],
        format!("localhost:{}", gw.listen.port()).as_str()
    );
    assert_eq!(ok["sni"], "localhost");
    assert_eq!(ok["tls_version"], "TLSv1.3");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["user_agent"], "access-log-test/1.0");
    assert_eq!(ok["decision"], "allowed");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["account"], "alice");
    assert_eq!(ok["serial"], alice.serial.as_str());
    assert_eq!(ok["bytes_in"], 1234);
    assert_eq!(ok["upstream_status"], 200);
    assert_eq!(ok["complete"], true);
    let out = ok["bytes_out"].as_u64().expect("bytes_out is an integer");
    assert!(out > 100, "{ok}");
    let dur = ok["duration_us"]
        .as_u64()
        .expect("duration_us is an integer");
    let up = ok["upstream_us"]
        .as_u64()
        .expect("upstream_us is an integer");
    assert!(dur >= up && up > 0, "{ok}");
    assert!(
        ok["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{ok}"
    );

    let refused = &lines[1];
    assert_eq!(refused["decision"], "no_cert");
    assert_eq!(refused["status"], 403);
    assert_eq!(refused["path"], "/app/private");
    assert_eq!(refused["bytes_in"], 0);
    assert!(refused.get("upstream_status").is_none(), "{refused}");
    assert!(refused.get("account").is_none(), "{refused}");
    assert_eq!(refused["request_id"].as_str().map(str::len), Some(32));
}

/// Text lines (the default format), one per request, as the rest of the log is written:
/// quotes and control characters of a client's user agent escaped, and every line still
/// buffered at a SIGTERM written before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_access_lines_are_escaped_and_written_before_exit() {
    let p = with_access_log("").await;
    let alice = p.pki.client("alice");
    let mut gw = start(&p);
    let client = h1_client(&p, &alice, gw.listen).build().unwrap();
    let base = format!("https://localhost:{}", gw.listen.port());
    let ua = http::HeaderValue::from_bytes(b"say \"hi\"\tnow \xff").unwrap();
    const N: usize = 20;
    for i in 0..N {
        let r = client
            .get(format!("{base}/app/n{i}"))
            .header("user-agent", ua.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // At once: the last lines may still be in the writer's buffer.
    gw.signal(libc::SIGTERM);
    assert_eq!(gw.wait_exit(support::STEP), Some(0), "{}", gw.log());
    let deadline = Instant::now() + support::STEP;
    let lines = loop {
        let lines: Vec<String> = gw
            .log()
            .lines()
            .filter(|l| l.contains(" INFO certgate::access: request "))
            .map(str::to_string)
            .collect();
        if lines.len() >= N || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), N, "log:\n{}", gw.log());
    for (i, l) in lines.iter().enumerate() {
        assert!(l.contains(&format!(" path=\"/app/n{i}\" ")), "{l}");
        assert!(
            l.contains(r#" user_agent="say \"hi\"\tnow �" "#),
            "user agent not escaped as the log escapes strings: {l}"
        );
        assert!(l.contains(" decision=\"allowed\" status=200 "), "{l}");
        assert!(l.contains(" account=\"alice\" "), "{l}");
        assert!(l.ends_with(" complete=true"), "{l}");
        // RFC 3339 with microseconds, UTC, then two spaces and the level.
        let (stamp, _) = l.split_once("  INFO ").unwrap();
        assert_eq!(stamp.len(), 27, "{l}");
        assert!(stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{l}");
    }
}
