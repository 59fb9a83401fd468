//! Hostile input against the data plane, with real clients over real TLS: what an attacker
//! sends that the gateway must neutralise before the app sees it.

mod support;

use std::collections::HashMap;

use support::wsgi::Wsgi;
use support::{Harness, Options, Resp, get};

/// Identity headers as a CGI-style app reads them once `_` and `-` are one character,
/// plus a harmless custom header spelled with `_`.
const UNDERSCORED: &[(&str, &str)] = &[
    ("X_Client_Account", "mallory"),
    ("x-client_account", "mallory"),
    ("X_Client_Cert_Serial", "00"),
    ("x_client-cert-fingerprint", "00"),
    ("Client_Cert", ":AAAA:"),
    ("Client_Cert_Chain", ":AAAA:"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("X_Forwarded_Host", "evil.example"),
    ("x_forwarded_client_cert", "Hash=00"),
    ("X_App_Token", "t"),
];

/// The app's `HTTP_*` variables from its answer.
fn environ(r: &Resp, what: &str) -> HashMap<String, String> {
    assert_eq!(r.status, 200, "{what}: body {}", r.text());
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{what}: {e}: {}", r.text()))
}

async fn behind_wsgi(underscores: Option<&'static str>) -> Option<(Harness, Wsgi)> {
    let app = Wsgi::start()?;
    let h = Harness::with(Options {
        upstream_url: Some(app.url()),
        underscores,
        ..Options::default()
    })
    .await;
    Some((h, app))
}

#[tokio::test]
async fn identity_headers_spelled_with_underscores_never_reach_a_wsgi_app() {
    let Some((h, _app)) = behind_wsgi(None).await else {
        return;
    };
    let alice = h.pki.client("alice");
    for (proto, with_cert, anonymous) in [
        ("h1", h.client_h1(Some(&alice)), h.client_h1(None)),
        ("h2", h.client(Some(&alice)), h.client(None)),
    ] {
        // A public route, no certificate at all: the app must see no account.
        let env = environ(
            &get(&anonymous, &h.url("/public/login"), UNDERSCORED).await,
            proto,
        );
        for var in [
            "HTTP_X_CLIENT_ACCOUNT",
            "HTTP_X_CLIENT_CERT_SERIAL",
            "HTTP_X_CLIENT_CERT_FINGERPRINT",
            "HTTP_CLIENT_CERT",
            "HTTP_CLIENT_CERT_CHAIN",
            "HTTP_X_FORWARDED_CLIENT_CERT",
        ] {
            assert!(
                !env.contains_key(var),
                "{proto}: public route without a certificate: the app saw {var}={:?}",
                env.get(var)
            );
        }
        assert_eq!(env["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{proto}");
        assert!(
            !env["HTTP_X_FORWARDED_HOST"].contains("evil"),
            "{proto}: {env:?}"
        );
        // headers.underscores defaults to drop.
        assert!(!env.contains_key("HTTP_X_APP_TOKEN"), "{proto}: {env:?}");

        // A protected route with alice's certificate: exactly alice, nothing joined to it.
        let env = environ(&get(&with_cert, &h.url("/app"), UNDERSCORED).await, proto);
        assert_eq!(env["HTTP_X_CLIENT_ACCOUNT"], "alice", "{proto}");
        assert_eq!(env["HTTP_X_CLIENT_CERT_SERIAL"], alice.serial, "{proto}");
        assert_eq!(
            env["HTTP_X_CLIENT_CERT_FINGERPRINT"], alice.fingerprint,
            "{proto}"
        );
        assert_eq!(
            env["HTTP_CLIENT_CERT"],
            alice.client_cert_header(),
            "{proto}"
        );
        assert_eq!(env["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{proto}");
        assert!(!env.contains_key("HTTP_CLIENT_CERT_CHAIN"), "{proto}");
        assert!(!env.contains_key("HTTP_X_FORWARDED_CLIENT_CERT"), "{proto}");
        assert!(!env.contains_key("HTTP_X_APP_TOKEN"), "{proto}: {env:?}");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn underscores_allow_forwards_other_names_but_never_identity_spellings() {
    let Some((h, _app)) = behind_wsgi(Some("allow")).await else {
        return;
    };
    let alice = h.pki.client("alice");
    for (proto, client) in [
        ("h1", h.client_h1(Some(&alice))),
        ("h2", h.client(Some(&alice))),
    ] {
        let env = environ(&get(&client, &h.url("/app"), UNDERSCORED).await, proto);
        assert_eq!(env["HTTP_X_APP_TOKEN"], "t", "{proto}");
        assert_eq!(env["HTTP_X_CLIENT_ACCOUNT"], "alice", "{proto}");
        assert_eq!(env["HTTP_X_CLIENT_CERT_SERIAL"], alice.serial, "{proto}");
        assert_eq!(env["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{proto}");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn underscores_reject_refuses_any_name_with_an_underscore() {
    let Some((h, _app)) = behind_wsgi(Some("reject")).await else {
        return;
    };
    let alice = h.pki.client("alice");
    for (proto, client) in [
        ("h1", h.client_h1(Some(&alice))),
        ("h2", h.client(Some(&alice))),
    ] {
        for spoof in [("X_App_Token", "t"), ("X_Client_Account", "mallory")] {
            let r = get(&client, &h.url("/app"), &[spoof]).await;
            assert_eq!(r.status, 400, "{proto} {spoof:?}: {}", r.text());
            assert_eq!(r.json()["error"], "bad_request", "{proto} {spoof:?}");
            let r = get(&client, &h.url("/public/login"), &[spoof]).await;
            assert_eq!(r.status, 400, "{proto} public {spoof:?}: {}", r.text());
        }
        let env = environ(
            &get(&client, &h.url("/app"), &[("X-App-Token", "t")]).await,
            proto,
        );
        assert_eq!(env["HTTP_X_APP_TOKEN"], "t", "{proto}");
        assert_eq!(env["HTTP_X_CLIENT_ACCOUNT"], "alice", "{proto}");
    }
    h.shutdown().await;
}

/// One raw HTTP/1.x request over TLS without a certificate; the answer's status.
async fn raw_status(h: &Harness, request: &str) -> u16 {
    let mut conn = support::RawClient::new(h.listen(), &h.pki.server_ca.der, None)
        .connect()
        .await
        .expect("handshake");
    conn.write_all(request.as_bytes()).await.expect("write");
    let out = conn.read_head(support::STEP).await;
    support::client::RawResponse::parse(&out.bytes).status
}

/// Paths that the gateway would classify as public but that some upstream resolves to
/// another (protected) path are refused, not forwarded; so are the path forms hidden in
/// look-alike characters. Ordinary public requests still pass.
#[tokio::test]
async fn path_forms_upstreams_resolve_differently_are_refused() {
    let h = Harness::with(Options::default()).await;
    assert_eq!(
        raw_status(&h, "GET /public/login HTTP/1.1\r\nHost: localhost\r\n\r\n").await,
        200
    );
    for path in [
        "/public/..;/secret",
        "/public/..%3b/secret",
        "/public/.;x/secret",
        "/public/%252e%252e/secret",
        "/public/%ef%bc%8e%ef%bc%8e/secret",
        "/public/%e2%80%a5/secret",
        "/public%ef%bc%8fsecret",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(raw_status(&h, &req).await, 400, "{path}");
    }
}

/// RFC 9112 §3.2: one Host per HTTP/1.1 request; a request target with userinfo, or naming
/// another host than the Host header, is refused instead of overriding it.
#[tokio::test]
async fn host_must_be_present_single_and_agree_with_the_target() {
    let h = Harness::with(Options::default()).await;
    for (what, req, want) in [
        (
            "control",
            "GET /public/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
            200,
        ),
        ("no Host", "GET /public/x HTTP/1.1\r\n\r\n", 400),
        (
            "two Hosts",
            "GET /public/x HTTP/1.1\r\nHost: localhost\r\nHost: evil\r\n\r\n",
            400,
        ),
        (
            "userinfo",
            "GET http://a@localhost/public/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
            400,
        ),
        (
            "target names another host",
            "GET http://evil.example/public/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
            400,
        ),
        (
            "absolute form agreeing with Host",
            "GET http://localhost/public/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
            200,
        ),
        (
            "HTTP/1.0 needs no Host",
            "GET /public/x HTTP/1.0\r\n\r\n",
            200,
        ),
    ] {
        assert_eq!(raw_status(&h, req).await, want, "{what}");
    }
}

/// A malformed chunked body is the client's fault: 400, not the 502 of an upstream failure.
#[tokio::test]
async fn a_malformed_chunked_body_is_a_bad_request() {
    let h = Harness::with(Options::default()).await;
    for (what, body) in [
        ("bad chunk size", "zz\r\nhello\r\n0\r\n\r\n"),
        (
            "chunk longer than announced",
            "3\r\nhello world\r\n0\r\n\r\n",
        ),
    ] {
        let req = format!(
            "POST /public/upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        assert_eq!(raw_status(&h, &req).await, 400, "{what}");
    }
    let good = "POST /public/upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(
        raw_status(&h, good).await,
        200,
        "a well-formed chunked body"
    );
}
