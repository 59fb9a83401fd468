//! The data plane end to end: real TLS over loopback with a PKI generated at test time, the
//! gateway started from a real config file, and an upstream that echoes what it receives.
//! One test per decision branch of DESIGN.md "Data plane: one request", plus the limits.

mod support;

use std::time::Duration;

use base64::Engine as _;
use rustls::{AlertDescription, HandshakeKind};
use support::client::{End, RawResponse};
use support::{Echo, Harness, LeafSpec, Options, Prepared, Resp, STEP, get, within};

/// Asserts a JSON refusal: status, `error` token and a non-empty `message`.
fn assert_refused(r: &Resp, status: u16, token: &str) {
    assert_eq!(
        r.status,
        status,
        "expected {status} {token}, body: {}",
        r.text()
    );
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.contains("application/json"),
        "content-type {ct:?} for a non-browser refusal"
    );
    let v = r.json();
    assert_eq!(v["error"], token, "refusal body: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "refusal without a message: {v}"
    );
}

fn assert_ok(r: &Resp, what: &str) -> Echo {
    assert_eq!(r.status, 200, "{what}: body {}", r.text());
    Echo::parse(&r.body)
}

/// The identity headers of `leaf` arrive upstream, once each, with the contract's text forms.
fn assert_identity(echo: &Echo, leaf: &support::Leaf, account: &str) {
    assert_eq!(echo.one("x-client-account"), account);
    assert_eq!(echo.one("x-client-cert-serial"), leaf.serial);
    assert_eq!(echo.one("x-client-cert-fingerprint"), leaf.fingerprint);
    assert_eq!(echo.one("x-client-cert-subject"), leaf.subject);
    assert_eq!(
        echo.one("x-client-cert-not-after"),
        leaf.not_after_rfc3339()
    );
    let client_cert = echo.one("client-cert");
    assert_eq!(client_cert, leaf.client_cert_header());
    let inner = client_cert
        .strip_prefix(':')
        .and_then(|s| s.strip_suffix(':'))
        .expect("Client-Cert is :base64:");
    let der = base64::engine::general_purpose::STANDARD
        .decode(inner)
        .expect("base64");
    assert_eq!(der, leaf.der, "Client-Cert must decode to the leaf DER");
    assert_eq!(echo.one("x-forwarded-proto"), "https");
    assert_eq!(echo.one("x-forwarded-for"), "127.0.0.1");
}

fn assert_no_identity(echo: &Echo) {
    let leaked: Vec<String> = ["x-client-", "client-cert", "x-forwarded-client-cert"]
        .iter()
        .flat_map(|p| echo.names_with_prefix(p))
        .collect();
    assert!(
        leaked.is_empty(),
        "identity headers reached the upstream: {leaked:?}"
    );
}

#[tokio::test]
async fn allowed_request_carries_identity_headers_h1() {
    let h = Harness::with(Options {
        xfcc: true,
        ..Options::default()
    })
    .await;
    let alice = h.pki.client("alice");
    let r = get(
        &h.client_h1(Some(&alice)),
        &h.url("/app/page?q=1&r=two"),
        &[],
    )
    .await;
    let echo = assert_ok(&r, "alice over h1");
    assert_eq!(echo.method, "GET");
    assert_eq!(echo.uri, "/app/page?q=1&r=two");
    assert_identity(&echo, &alice, "alice");
    let host = echo.one("x-forwarded-host");
    assert!(host.starts_with("localhost"), "X-Forwarded-Host {host:?}");
    let xfcc = echo.one("x-forwarded-client-cert");
    assert!(
        xfcc.contains(&format!("Hash={}", alice.fingerprint)),
        "XFCC {xfcc:?}"
    );
    assert!(xfcc.contains("urn:certgate:account:alice"), "XFCC {xfcc:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn allowed_request_carries_identity_headers_h2() {
    let h = Harness::start().await;
    let alice = h.pki.client("alice");
    let client = h.client(Some(&alice));
    let resp = within("h2 GET", client.get(h.url("/app")).send())
        .await
        .expect("h2 GET");
    assert_eq!(
        resp.version(),
        reqwest::Version::HTTP_2,
        "ALPN should pick h2"
    );
    let r = Resp::from_reqwest(resp).await;
    let echo = assert_ok(&r, "alice over h2");
    assert_identity(&echo, &alice, "alice");
    // xfcc is off by default.
    assert!(
        !echo.has("x-forwarded-client-cert"),
        "XFCC sent although headers.xfcc is false"
    );
    h.shutdown().await;
}

/// `headers.identity` turns single headers off; the others still arrive, and a client's
/// copy of one that is off is removed all the same.
#[tokio::test]
async fn identity_headers_can_be_turned_off_one_by_one() {
    let h = Harness::with(Options {
        extra_headers: vec![
            "identity:".into(),
            "  client_cert: false".into(),
            "  subject: false".into(),
        ],
        ..Options::default()
    })
    .await;
    let alice = h.pki.client("alice");
    for client in [h.client_h1(Some(&alice)), h.client(Some(&alice))] {
        let spoofed = [
            ("client-cert", ":AAAA:"),
            ("x-client-cert-subject", "CN=mallory"),
        ];
        let r = get(&client, &h.url("/app"), &spoofed).await;
        let echo = assert_ok(&r, "alice with two headers off");
        assert_eq!(echo.one("x-client-account"), "alice");
        assert_eq!(echo.one("x-client-cert-serial"), alice.serial);
        assert_eq!(echo.one("x-client-cert-fingerprint"), alice.fingerprint);
        assert_eq!(
            echo.one("x-client-cert-not-after"),
            alice.not_after_rfc3339()
        );
        assert!(!echo.has("client-cert"), "Client-Cert sent although off");
        assert!(
            !echo.has("x-client-cert-subject"),
            "subject sent although off"
        );
    }
    h.shutdown().await;
}

#[tokio::test]
async fn account_comes_from_uri_then_email_then_cn() {
    let h = Harness::start().await;
    let both = h
        .pki
        .client_ca
        .issue(&LeafSpec::account("uri-wins").san_email("mail@example.com"));
    let email = h
        .pki
        .client_ca
        .issue(&LeafSpec::bare("cn-loses").san_email("dora@example.com"));
    let cn = h.pki.client_ca.issue(&LeafSpec::bare("erin"));
    for (leaf, account) in [
        (&both, "uri-wins"),
        (&email, "dora@example.com"),
        (&cn, "erin"),
    ] {
        let r = get(&h.client_h1(Some(leaf)), &h.url("/app"), &[]).await;
        let echo = assert_ok(&r, account);
        assert_eq!(echo.one("x-client-account"), account);
        assert_eq!(echo.one("x-client-cert-serial"), leaf.serial);
    }
    h.shutdown().await;
}

#[tokio::test]
async fn public_route_is_forwarded_without_identity() {
    let h = Harness::with(Options {
        xfcc: true,
        ..Options::default()
    })
    .await;
    let alice = h.pki.client("alice");
    // With a certificate: forwarded, identity not sent.
    for path in ["/public", "/public/", "/public/deep/page?x=1"] {
        let r = get(&h.client_h1(Some(&alice)), &h.url(path), &[]).await;
        let echo = assert_ok(&r, path);
        assert_no_identity(&echo);
        assert_eq!(echo.one("x-forwarded-for"), "127.0.0.1");
    }
    // Without one: still forwarded.
    let anon = h.client_h1(None);
    let echo = assert_ok(
        &get(&anon, &h.url("/public/x"), &[]).await,
        "anonymous /public/x",
    );
    assert_no_identity(&echo);
    // Matching is by whole segments: /publicx is protected.
    let r = get(&anon, &h.url("/publicx"), &[]).await;
    assert_refused(&r, 403, "no_cert");
    assert!(
        h.upstream.seen_with_prefix("/publicx").is_empty(),
        "/publicx was forwarded"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn no_cert_is_refused_as_json_and_as_html() {
    let h = Harness::start().await;
    for client in [h.client_h1(None), h.client(None)] {
        let r = get(
            &client,
            &h.url("/app/secret"),
            &[("accept", "application/json")],
        )
        .await;
        assert_refused(&r, 403, "no_cert");

        let r = get(
            &client,
            &h.url("/app/secret"),
            &[("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")],
        )
        .await;
        assert_eq!(r.status, 403, "HTML refusal body: {}", r.text());
        let ct = r.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("text/html"),
            "browser refusal content-type {ct:?}"
        );
        let page = r.text().to_ascii_lowercase();
        assert!(
            page.contains("<html") || page.contains("<!doctype html"),
            "not a page: {page}"
        );
        assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err());
    }
    assert!(
        h.upstream.seen_with_prefix("/app").is_empty(),
        "a refused request reached upstream"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn revocation_applies_to_an_open_connection_without_a_new_handshake() {
    let h = Harness::start().await;
    let alice = h.pki.client("alice");
    let mut conn = h
        .raw(Some(&alice))
        .connect()
        .await
        .expect("handshake")
        .into_http1()
        .await;
    assert_ok(&conn.get("/app/1").await, "before revocation");

    h.admin().revoke(&alice.serial).await;

    // Same keep-alive connection, no new handshake: closed by the revocation (open
    // connections follow the decision), or refused if the request got there first.
    if let Some(r) = conn.get_or_closed("/app/2").await {
        assert_refused(&r, 403, "revoked");
    }
    // And a fresh client.
    let r = get(&h.client(Some(&alice)), &h.url("/app/3"), &[]).await;
    assert_refused(&r, 403, "revoked");
    assert!(h.upstream.seen_with_prefix("/app/2").is_empty());
    assert!(h.upstream.seen_with_prefix("/app/3").is_empty());
    // Another account is unaffected.
    let bob = h.pki.client("bob");
    assert_ok(
        &get(&h.client(Some(&bob)), &h.url("/app/4"), &[]).await,
        "bob",
    );
    h.shutdown().await;
}

#[tokio::test]
async fn reset_refuses_enrollment_certificates_of_older_generations() {
    let h = Harness::start().await;
    let admin = h.admin();
    admin.reset("bob").await;
    let generation = admin.generation("bob").await;
    let current = h.pki.enrolled("bob", generation);

    let mut conn = h
        .raw(Some(&current))
        .connect()
        .await
        .expect("handshake")
        .into_http1()
        .await;
    let echo = assert_ok(&conn.get("/app").await, "current generation");
    assert_eq!(echo.one("x-client-account"), "bob");

    admin.reset("bob").await;
    assert_eq!(
        admin.generation("bob").await,
        generation + 1,
        "reset must bump the generation"
    );

    if let Some(r) = conn.get_or_closed("/app").await {
        assert_refused(&r, 403, "reset");
    }
    let r = get(&h.client(Some(&current)), &h.url("/app"), &[]).await;
    assert_refused(&r, 403, "reset");

    // The new generation's certificate works.
    let next = h.pki.enrolled("bob", generation + 1);
    assert_ok(
        &get(&h.client(Some(&next)), &h.url("/app"), &[]).await,
        "new generation",
    );
    h.shutdown().await;
}

#[tokio::test]
async fn reset_refuses_trusted_ca_certificates_issued_before_it() {
    let h = Harness::start().await;
    let admin = h.admin();
    let carol = h.pki.client("carol");
    // A certificate from a CA other than the enrollment CA claiming a far-future generation:
    // the generation must be ignored.
    let claims_future = h
        .pki
        .client_ca
        .issue(&LeafSpec::account("carol").generation(999));
    assert_ok(
        &get(&h.client(Some(&carol)), &h.url("/app"), &[]).await,
        "before reset",
    );

    admin.reset("carol").await;
    let reset_done = support::pki::now();

    assert_refused(
        &get(&h.client(Some(&carol)), &h.url("/app"), &[]).await,
        403,
        "reset",
    );
    assert_refused(
        &get(&h.client(Some(&claims_future)), &h.url("/app"), &[]).await,
        403,
        "reset",
    );

    // A certificate whose notBefore is after the reset is accepted.
    let after = reset_done + time::Duration::seconds(1);
    let fresh = h
        .pki
        .client_ca
        .issue(&LeafSpec::account("carol").not_before(after));
    support::wait_until_past(after).await;
    assert_ok(
        &get(&h.client(Some(&fresh)), &h.url("/app"), &[]).await,
        "issued after reset",
    );
    h.shutdown().await;
}

#[tokio::test]
async fn expired_certificate_on_a_resumed_session_is_refused() {
    let h = Harness::start().await;
    let short = h
        .pki
        .client_ca
        .issue(&LeafSpec::account("frank").expiring_in(4));
    let raw = h.raw(Some(&short));

    let first = raw.connect().await.expect("full handshake while valid");
    assert_eq!(first.handshake_kind(), Some(HandshakeKind::Full));
    let mut conn = first.into_http1().await;
    let echo = assert_ok(&conn.get("/app").await, "short-lived cert while valid");
    assert_eq!(echo.one("x-client-account"), "frank");
    drop(conn);

    support::wait_until_past(short.not_after + time::Duration::seconds(1)).await;

    let second = raw.connect().await.expect("resumed handshake");
    assert_eq!(
        second.handshake_kind(),
        Some(HandshakeKind::Resumed),
        "the second connection should resume the TLS 1.3 session"
    );
    let mut conn = second.into_http1().await;
    assert_refused(&conn.get("/app/after-expiry").await, 403, "expired");
    assert!(h.upstream.seen_with_prefix("/app/after-expiry").is_empty());

    // Without a session to resume, the handshake itself refuses the expired certificate.
    let f = h
        .raw(Some(&short))
        .expect_refused("expired cert, full handshake")
        .await;
    assert_eq!(f.alert, Some(AlertDescription::CertificateExpired), "{f:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn already_expired_certificate_fails_the_handshake() {
    let h = Harness::start().await;
    let old = h.pki.client_ca.issue(&LeafSpec::account("gina").expired());
    let f = h
        .raw(Some(&old))
        .expect_refused("expired client cert")
        .await;
    assert_eq!(f.alert, Some(AlertDescription::CertificateExpired), "{f:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn crl_listed_certificate_fails_the_handshake() {
    let mut p = Prepared::new(Options::default()).await;
    let listed = p.pki.client("mallory");
    let crl = p.pki.client_ca.crl(&[&listed]);
    p.set_crl(crl);
    let h = p.start().await;

    let f = h.raw(Some(&listed)).expect_refused("CRL-listed cert").await;
    assert_eq!(f.alert, Some(AlertDescription::CertificateRevoked), "{f:?}");
    // A certificate of the same CA that is not listed still works.
    let alice = h.pki.client("alice");
    assert_ok(
        &get(&h.client(Some(&alice)), &h.url("/app"), &[]).await,
        "unlisted cert",
    );
    h.shutdown().await;
}

#[tokio::test]
async fn untrusted_ca_fails_the_handshake() {
    let h = Harness::start().await;
    let stranger = h.pki.foreign_ca.issue(&LeafSpec::account("alice"));
    let f = h.raw(Some(&stranger)).expect_refused("foreign CA").await;
    assert_eq!(f.alert, Some(AlertDescription::UnknownCA), "{f:?}");
    // Also refused by a normal client, even on a public path.
    let res = within(
        "foreign CA GET",
        h.client(Some(&stranger)).get(h.url("/public")).send(),
    )
    .await;
    assert!(
        res.is_err(),
        "foreign CA got an HTTP answer: {:?}",
        res.map(|r| r.status())
    );
    assert!(h.upstream.seen().is_empty(), "upstream was called");
    h.shutdown().await;
}

#[tokio::test]
async fn enrollment_ca_is_not_trusted_when_enrollment_is_off() {
    let h = Harness::with(Options {
        enrollment: false,
        ..Options::default()
    })
    .await;
    let enrolled = h.pki.enrolled("alice", 1);
    let f = h
        .raw(Some(&enrolled))
        .expect_refused("enrollment-CA cert, enrollment off")
        .await;
    assert_eq!(f.alert, Some(AlertDescription::UnknownCA), "{f:?}");
    let alice = h.pki.client("alice");
    assert_ok(
        &get(&h.client(Some(&alice)), &h.url("/app"), &[]).await,
        "client CA cert",
    );
    h.shutdown().await;
}

#[tokio::test]
async fn required_mode_refuses_a_handshake_without_certificate() {
    let h = Harness::with(Options {
        mode: "required",
        ..Options::default()
    })
    .await;
    let f = h
        .raw(None)
        .expect_refused("no certificate in required mode")
        .await;
    assert_eq!(
        f.alert,
        Some(AlertDescription::CertificateRequired),
        "{f:?}"
    );
    let alice = h.pki.client("alice");
    assert_ok(
        &get(&h.client(Some(&alice)), &h.url("/app"), &[]).await,
        "with a certificate",
    );
    assert!(h.upstream.seen_with_prefix("/public").is_empty());
    h.shutdown().await;
}

const SPOOFED: &[(&str, &str)] = &[
    ("x-client-account", "mallory"),
    ("x-client-cert-serial", "00"),
    ("x-client-cert-fingerprint", "00"),
    ("x-client-cert-subject", "CN=mallory"),
    ("x-client-cert-not-after", "2999-01-01T00:00:00Z"),
    ("x-client-anything", "mallory"),
    ("client-cert", ":AAAA:"),
    ("client-cert-chain", ":AAAA:"),
    ("x-forwarded-client-cert", "Hash=00;Subject=\"CN=mallory\""),
    ("forwarded", "for=1.2.3.4;proto=http"),
    ("x-forwarded-for", "1.2.3.4"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "http"),
    ("x-forwarded-port", "1"),
];

#[tokio::test]
async fn spoofed_identity_headers_are_stripped_on_every_route() {
    let h = Harness::with(Options {
        xfcc: true,
        ..Options::default()
    })
    .await;
    let alice = h.pki.client("alice");
    for (proto, client) in [
        ("h1", h.client_h1(Some(&alice))),
        ("h2", h.client(Some(&alice))),
    ] {
        let echo = assert_ok(&get(&client, &h.url("/app"), SPOOFED).await, proto);
        assert_identity(&echo, &alice, "alice");
        assert!(
            !echo.has("x-client-anything"),
            "{proto}: X-Client-* not stripped"
        );
        assert!(
            !echo.has("client-cert-chain"),
            "{proto}: Client-Cert-Chain not stripped"
        );
        assert!(!echo.has("forwarded"), "{proto}: Forwarded not stripped");
        assert!(
            !echo.has("x-forwarded-port"),
            "{proto}: X-Forwarded-Port not stripped"
        );
        assert_ne!(echo.one("x-forwarded-host"), "evil.example", "{proto}");
        let xfcc = echo.one("x-forwarded-client-cert");
        assert!(xfcc.contains(&alice.fingerprint), "{proto}: XFCC {xfcc:?}");

        // Public route, with and without a certificate.
        for (who, c) in [("with cert", &client), ("anonymous", &h.client(None))] {
            let echo = assert_ok(&get(c, &h.url("/public/x"), SPOOFED).await, who);
            assert_no_identity(&echo);
            assert!(
                !echo.has("forwarded"),
                "{proto} {who}: Forwarded not stripped"
            );
            assert!(
                !echo.has("x-forwarded-port"),
                "{proto} {who}: X-Forwarded-Port"
            );
            assert_eq!(echo.one("x-forwarded-for"), "127.0.0.1", "{proto} {who}");
            assert_eq!(echo.one("x-forwarded-proto"), "https", "{proto} {who}");
            assert_ne!(
                echo.one("x-forwarded-host"),
                "evil.example",
                "{proto} {who}"
            );
        }
    }
    h.shutdown().await;
}

#[tokio::test]
async fn upstream_down_is_502_without_internals() {
    let dead = support::closed_port().await;
    let h = Harness::with(Options {
        upstream_url: Some(format!("http://{dead}")),
        connect_timeout: "2s",
        ..Options::default()
    })
    .await;
    let alice = h.pki.client("alice");
    let r = get(&h.client_h1(Some(&alice)), &h.url("/app"), &[]).await;
    assert_eq!(r.status, 502, "body {}", r.text());
    let body = r.text().to_ascii_lowercase();
    for leak in [
        dead.to_string(),
        format!(":{}", dead.port()),
        "os error".into(),
        "refused".into(),
        "hyper".into(),
        "errno".into(),
        "tcp".into(),
    ] {
        assert!(!body.contains(&leak), "502 body leaks {leak:?}: {body}");
    }
    // Public routes go to the same upstream.
    let r = get(&h.client(None), &h.url("/public"), &[]).await;
    assert_eq!(r.status, 502, "public route, body {}", r.text());
    h.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let h = Harness::with(Options {
        response_timeout: "1s",
        ..Options::default()
    })
    .await;
    let alice = h.pki.client("alice");
    let r = get(&h.client(Some(&alice)), &h.url("/slow"), &[]).await;
    assert_eq!(r.status, 504, "body {}", r.text());
    let body = r.text();
    assert!(
        !body.contains(&h.upstream.addr.to_string()),
        "504 body leaks the upstream: {body}"
    );
    // The gateway is still fine afterwards.
    assert_ok(
        &get(&h.client(Some(&alice)), &h.url("/app"), &[]).await,
        "after a 504",
    );
    h.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let h = Harness::with(Options {
        max_header_bytes: Some("16KiB"),
        ..Options::default()
    })
    .await;
    let alice = h.pki.client("alice");
    let mut conn = h.raw(Some(&alice)).connect().await.expect("handshake");
    let big = "a".repeat(20 * 1024);
    let req = format!("GET /app HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("write request");
    let read = conn.read_until_close(STEP).await;
    assert!(
        !read.bytes.is_empty(),
        "no answer to oversized headers: {:?}",
        read.end
    );
    let resp = RawResponse::parse(&read.bytes);
    assert_eq!(resp.status, 431, "head: {}", resp.head);
    assert!(
        h.upstream.seen().is_empty(),
        "oversized request reached the upstream"
    );
    // Headers under the limit pass.
    let small = "a".repeat(4 * 1024);
    let r = get(
        &h.client_h1(Some(&alice)),
        &h.url("/app"),
        &[("x-big", small.as_str())],
    )
    .await;
    assert_ok(&r, "4 KiB header");
    h.shutdown().await;
}

#[tokio::test]
async fn headers_sent_too_slowly_close_the_connection() {
    let h = Harness::start().await; // limits.header_read_timeout: 1s
    let alice = h.pki.client("alice");

    // Stalled: half a request head, then nothing.
    let mut conn = h.raw(Some(&alice)).connect().await.expect("handshake");
    conn.write_all(b"GET /app/stalled HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    let read = conn.read_until_close(STEP).await;
    assert!(
        !matches!(read.end, End::Timeout),
        "stalled head kept open for {STEP:?}"
    );
    if !read.bytes.is_empty() {
        assert_eq!(RawResponse::parse(&read.bytes).status, 408);
    }

    // Trickled: one header line every 200 ms; the timeout covers the whole head.
    let conn = h.raw(Some(&alice)).connect().await.expect("handshake");
    let (mut rd, mut wr) = tokio::io::split(conn.stream);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        if wr
            .write_all(b"GET /app/trickled HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .is_err()
        {
            return;
        }
        for i in 0..500 {
            let line = format!("X-Trickle-{i}: y\r\n");
            if wr.write_all(line.as_bytes()).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let closed = tokio::time::timeout(STEP, async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    writer.abort();
    assert!(
        closed.is_ok(),
        "a trickled request head was kept open for {STEP:?}"
    );
    assert!(h.upstream.seen_with_prefix("/app/stalled").is_empty());
    assert!(h.upstream.seen_with_prefix("/app/trickled").is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn dot_segments_and_encoded_separators_are_400() {
    let h = Harness::start().await;
    let alice = h.pki.client("alice");
    let cases: &[(Option<&support::Leaf>, &str)] = &[
        (Some(&alice), "/a/../b"),
        (Some(&alice), "/app/.."),
        (Some(&alice), "/a%2fb"),
        (Some(&alice), "/a%2Fb"),
        (Some(&alice), "/a%5cb"),
        (None, "/public/../app"),
        (None, "/public/..%2fapp"),
        (None, "/public%2f..%2fapp"),
    ];
    for (identity, path) in cases {
        let mut conn = h
            .raw(*identity)
            .connect()
            .await
            .expect("handshake")
            .into_http1()
            .await;
        let r = conn.get(path).await;
        assert_refused(&r, 400, "bad_request");
    }
    let forwarded: Vec<String> = h.upstream.seen().into_iter().map(|s| s.uri).collect();
    assert!(
        forwarded.is_empty(),
        "bad paths reached the upstream: {forwarded:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn percent_encoded_dot_segments_are_400() {
    let h = Harness::start().await;
    for path in [
        "/public/%2e%2e/app",
        "/public/%2E%2E/app",
        "/public/.%2e/app",
    ] {
        let mut conn = h
            .raw(None)
            .connect()
            .await
            .expect("handshake")
            .into_http1()
            .await;
        let r = conn.get(path).await;
        assert_refused(&r, 400, "bad_request");
    }
    let forwarded: Vec<String> = h.upstream.seen().into_iter().map(|s| s.uri).collect();
    assert!(
        forwarded.is_empty(),
        "encoded dot segments reached the upstream: {forwarded:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn server_names_enforce_sni_and_host() {
    let h = Harness::with(Options {
        server_names: vec!["localhost".into()],
        ..Options::default()
    })
    .await;
    let alice = h.pki.client("alice");

    let mut conn = h
        .raw(Some(&alice))
        .connect()
        .await
        .expect("handshake")
        .into_http1()
        .await;
    let r = conn
        .send("GET", "/app", &[("host", "other.example")])
        .await
        .expect("request");
    assert_refused(&r, 421, "misdirected");
    // Case-insensitive, port ignored.
    let r = conn
        .send("GET", "/app", &[("host", "LOCALHOST:8443")])
        .await
        .expect("request");
    assert_ok(&r, "Host LOCALHOST:8443 with SNI localhost");
    assert!(
        h.upstream.seen().len() == 1,
        "the 421 request was forwarded"
    );

    let f = h
        .raw(Some(&alice))
        .server_name("other.example")
        .expect_refused("unlisted SNI")
        .await;
    assert_eq!(f.alert, Some(AlertDescription::UnrecognisedName), "{f:?}");
    // An IP address is never sent as SNI: no SNI at all.
    let f = h
        .raw(Some(&alice))
        .server_name("127.0.0.1")
        .expect_refused("absent SNI")
        .await;
    assert_eq!(f.alert, Some(AlertDescription::UnrecognisedName), "{f:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let h = Harness::start().await;
    let alice = h.pki.client("alice");
    let mut conn = h.raw(Some(&alice)).connect().await.expect("handshake");
    conn.write_all(
        b"GET /ws/chat HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write upgrade");
    let head = conn.read_head(STEP).await;
    let text = String::from_utf8_lossy(&head.bytes).to_ascii_lowercase();
    assert!(
        text.starts_with("http/1.1 101"),
        "upgrade answer: {text:?} ({:?})",
        head.end
    );
    assert!(
        text.contains("x-upstream-saw-account: alice"),
        "upstream did not see identity: {text}"
    );

    let msg = b"hello through the tunnel";
    conn.write_all(msg).await.expect("write tunnel");
    let mut got = Vec::new();
    while got.len() < msg.len() {
        let mut buf = [0u8; 256];
        let n = within(
            "tunnel echo",
            tokio::io::AsyncReadExt::read(&mut conn.stream, &mut buf),
        )
        .await
        .expect("read tunnel");
        assert!(n > 0, "tunnel closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, msg);
    h.shutdown().await;
}

#[tokio::test]
async fn garbage_does_not_take_the_gateway_down() {
    let h = Harness::with(Options {
        extra_limits: vec!["handshake_timeout: 2s".into()],
        ..Options::default()
    })
    .await;
    let alice = h.pki.client("alice");

    // Garbage inside TLS, on an h1 connection.
    let mut conn = h.raw(Some(&alice)).connect().await.expect("handshake");
    conn.write_all(b"\x00\x01\x02 NOT HTTP \xff\xfe\r\n\r\n\x7f")
        .await
        .expect("write");
    let read = conn.read_until_close(STEP).await;
    assert!(
        !matches!(read.end, End::Timeout),
        "garbage connection left open"
    );
    if !read.bytes.is_empty() {
        assert_eq!(RawResponse::parse(&read.bytes).status, 400);
    }

    // Garbage inside TLS on an h2 connection (bad preface).
    let raw_h2 = support::RawClient::build(
        h.listen(),
        &h.pki.server_ca.der,
        Some(&alice),
        vec![b"h2".to_vec()],
    );
    let mut conn = raw_h2.connect().await.expect("h2 handshake");
    assert_eq!(conn.alpn().as_deref(), Some(&b"h2"[..]));
    conn.write_all(b"this is not the HTTP/2 preface\r\n\r\n")
        .await
        .expect("write");
    let read = conn.read_until_close(STEP).await;
    assert!(
        !matches!(read.end, End::Timeout),
        "h2 garbage connection left open"
    );

    // Garbage instead of a TLS handshake.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        b"\x16\x03\x01\x00\x05hello",
        b"\x00",
    ] {
        let mut tcp = tokio::net::TcpStream::connect(h.listen())
            .await
            .expect("tcp");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(junk).await.expect("write junk");
        let mut buf = Vec::new();
        let r = tokio::time::timeout(STEP, tcp.read_to_end(&mut buf)).await;
        assert!(
            r.is_ok(),
            "connection with {junk:?} instead of TLS left open"
        );
    }

    // A client that connects and says nothing is dropped after limits.handshake_timeout.
    let mut silent = tokio::net::TcpStream::connect(h.listen())
        .await
        .expect("tcp");
    let mut buf = Vec::new();
    let r = tokio::time::timeout(
        STEP,
        tokio::io::AsyncReadExt::read_to_end(&mut silent, &mut buf),
    )
    .await;
    assert!(r.is_ok(), "a silent connection was kept open for {STEP:?}");

    // Still serving.
    assert_ok(
        &get(&h.client(Some(&alice)), &h.url("/app"), &[]).await,
        "after garbage",
    );
    h.shutdown().await;
}

#[tokio::test]
async fn certgate_paths_are_never_forwarded() {
    let h = Harness::start().await;
    let alice = h.pki.client("alice");
    for client in [h.client(Some(&alice)), h.client(None)] {
        for path in [
            "/.certgate/",
            "/.certgate/no-such-endpoint",
            "/.certgate/ca.pem",
            "/.certgate/enroll?ticket=bogus",
        ] {
            let r = get(&client, &h.url(path), &[]).await;
            assert!(r.status != 502 && r.status != 504, "{path}: {}", r.status);
        }
    }
    let forwarded = h.upstream.seen_with_prefix("/.certgate");
    assert!(
        forwarded.is_empty(),
        "certgate's own paths reached the upstream: {forwarded:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let h = Harness::start().await;
    let alice = h.pki.client("alice");
    let n = 8 * 1024 * 1024;
    for client in [h.client_h1(Some(&alice)), h.client(Some(&alice))] {
        let r = get(&client, &h.url(&format!("/stream?bytes={n}")), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), n, "streamed body length");
        let bad = r
            .body
            .iter()
            .enumerate()
            .find(|(i, b)| **b != support::upstream::stream_byte(*i));
        assert!(
            bad.is_none(),
            "streamed body differs at {:?}",
            bad.map(|(i, _)| i)
        );

        let upload = vec![7u8; 3 * 1024 * 1024];
        let resp = within(
            "POST upload",
            client.post(h.url("/upload")).body(upload).send(),
        )
        .await
        .expect("POST");
        let echo = assert_ok(&Resp::from_reqwest(resp).await, "upload");
        assert_eq!(echo.method, "POST");
        assert_eq!(
            echo.body_len,
            3 * 1024 * 1024,
            "uploaded body length upstream"
        );
    }
    let uploads = h.upstream.seen_with_prefix("/upload");
    assert_eq!(uploads.len(), 2);
    h.shutdown().await;
}

/// `/metrics` from the start: the build (version and commit), the process (CPU, memory,
/// file descriptors, start time), and every certgate counter family present before any
/// traffic.
#[tokio::test]
async fn metrics_name_the_build_and_the_process_from_the_start() {
    let h = Harness::start().await;
    let m = h.metrics_text().await;
    let build = m
        .lines()
        .find(|l| l.starts_with("certgate_build_info{"))
        .unwrap_or_else(|| panic!("no certgate_build_info in\n{m}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    let commit = build
        .split("commit=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("commit label");
    assert!(!commit.is_empty(), "{build}");
    assert!(build.ends_with(" 1"), "{build}");

    let rss = support::sample(&m, "process_resident_memory_bytes").expect("RSS");
    assert!(rss > 1e6, "RSS {rss}");
    let fds = support::sample(&m, "process_open_fds").expect("open fds");
    assert!(fds >= 3.0, "fds {fds}");
    assert!(support::sample(&m, "process_max_fds").expect("fd limit") >= fds);
    assert!(support::sample(&m, "process_cpu_seconds_total").expect("CPU") >= 0.0);
    let start = support::sample(&m, "process_start_time_seconds").expect("start time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(start > 1.6e9 && start <= now, "start {start}");

    // notAfter of the server certificate and the enrollment CA, as Unix times.
    for which in ["server", "enrollment_ca"] {
        let name = format!("certgate_certificate_not_after_seconds{{certificate=\"{which}\"}}");
        let t = support::sample(&m, &name).unwrap_or_else(|| panic!("no {name} in\n{m}"));
        assert!(t > now && t < now + 20.0 * 365.0 * 86_400.0, "{name} {t}");
    }

    for family in [
        "certgate_connections_refused_total",
        "certgate_state_store_errors_total",
        "certgate_state_store_outages_total",
        "certgate_connections_closed_total{reason=\"revoked\"}",
        "certgate_h2_abuse_total{kind=\"ping\"}",
    ] {
        assert_eq!(support::sample(&m, family), Some(0.0), "{family} at start");
    }
}
