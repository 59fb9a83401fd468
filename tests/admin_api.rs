//! The admin API through a running gateway: authentication, the account and certificate
//! flows, and that what it records survives a restart on the same store file.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Harness, Resp, within};

async fn data_plane_get(h: &Harness, leaf: &support::Leaf, path: &str) -> Resp {
    let resp = within(
        "data plane GET",
        h.client(Some(leaf)).get(h.url(path)).send(),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
    Resp::from_reqwest(resp).await
}

fn assert_2xx(r: &Resp, what: &str) {
    assert!(
        (200..300).contains(&r.status),
        "{what}: HTTP {} {}",
        r.status,
        r.text()
    );
}

fn assert_error(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: body {}", r.text());
    let v = r.json();
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: error body {v}"
    );
}

/// Whether a certificate status JSON says "revoked" (a boolean, or an object with details).
fn says_revoked(v: &Value) -> bool {
    match &v["revoked"] {
        Value::Bool(b) => *b,
        Value::Object(_) => true,
        _ => false,
    }
}

const PROTECTED: &[(&str, &str)] = &[
    ("GET", "/v1/accounts/alice"),
    ("POST", "/v1/accounts/alice/two-factor"),
    ("POST", "/v1/accounts/alice/reset"),
    ("POST", "/v1/accounts/alice/tickets"),
    ("GET", "/v1/certificates/0a1b2c"),
    ("POST", "/v1/certificates/0a1b2c/revoke"),
];

#[tokio::test]
async fn wrong_or_missing_token_is_401() {
    let h = Harness::start().await;
    let admin = h.admin();
    let wrong = support::pki::random_token();
    let prefix = h.token[..h.token.len() / 2].to_string();
    for (method, path) in PROTECTED {
        let m: Method = method.parse().expect("method");
        let body = (m == Method::POST).then(|| json!({"reason": "keyCompromise"}));
        for (label, token) in [
            ("no token", None),
            ("wrong token", Some(wrong.as_str())),
            ("token prefix", Some(prefix.as_str())),
        ] {
            let r = admin.send_with(m.clone(), path, token, body.clone()).await;
            assert_error(&r, 401, &format!("{method} {path} with {label}"));
        }
        // Not a bearer token at all.
        let r = within(
            "basic auth",
            reqwest::Client::new()
                .request(m.clone(), format!("{}{path}", admin.base))
                .basic_auth("admin", Some(&h.token))
                .send(),
        )
        .await
        .expect("basic auth request");
        assert_eq!(r.status().as_u16(), 401, "{method} {path} with Basic auth");
    }
    // None of the refused calls changed anything.
    let r = admin.get("/v1/accounts/alice").await;
    assert_error(&r, 404, "account after refused calls");
    let r = admin.get("/v1/certificates/0a1b2c").await;
    assert!(
        !(r.status == 200 && says_revoked(&r.json())),
        "an unauthenticated revoke took effect"
    );

    // Probes need no token.
    for path in ["/healthz", "/readyz"] {
        let r = admin.send_with(Method::GET, path, None, None).await;
        assert_eq!(r.status, 200, "{path} on the admin listener: {}", r.text());
        let r = within(
            "probe on metrics listener",
            reqwest::Client::new()
                .get(format!("http://{}{path}", h.metrics_addr()))
                .send(),
        )
        .await
        .expect("probe");
        assert_eq!(r.status().as_u16(), 200, "{path} on the metrics listener");
    }
    h.shutdown().await;
}

fn assert_ticket(v: &Value, what: &str) -> String {
    let ticket = v["ticket"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no ticket in {v}"));
    // base64url of 32 random bytes, no padding.
    assert_eq!(ticket.len(), 43, "{what}: ticket {ticket:?}");
    assert!(
        ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{what}: ticket is not base64url: {ticket:?}"
    );
    ticket.to_string()
}

#[tokio::test]
async fn two_factor_enables_and_hands_out_an_enrollment_link() {
    let h = Harness::start().await;
    let admin = h.admin();
    assert_error(
        &admin.get("/v1/accounts/alice").await,
        404,
        "unknown account",
    );

    let r = admin.post("/v1/accounts/alice/two-factor", None).await;
    assert_2xx(&r, "enable two-factor");
    let v = r.json();
    let ticket = assert_ticket(&v, "two-factor");
    let url = v["enroll_url"]
        .as_str()
        .unwrap_or_else(|| panic!("no enroll_url in {v}"));
    assert_eq!(
        url,
        format!("https://localhost:8443/.certgate/enroll?ticket={ticket}")
    );

    let r = admin.get("/v1/accounts/alice").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["two_factor"], true, "account after enabling: {v}");
    assert!(v["generation"].is_u64(), "generation in {v}");

    // A new ticket for the current generation; tickets are never reused.
    let r = admin.post("/v1/accounts/alice/tickets", None).await;
    assert_2xx(&r, "new ticket");
    let again = assert_ticket(&r.json(), "tickets");
    assert_ne!(again, ticket);
    h.shutdown().await;
}

#[tokio::test]
async fn reset_creates_the_account_and_bumps_the_generation() {
    let h = Harness::start().await;
    let admin = h.admin();
    assert_error(
        &admin.get("/v1/accounts/dave").await,
        404,
        "unknown account",
    );

    // A reset of an unknown account creates its record.
    admin.reset("dave").await;
    let g1 = admin.generation("dave").await;

    // With two-factor on, every reset hands out a fresh ticket.
    let r = admin.post("/v1/accounts/dave/two-factor", None).await;
    assert_2xx(&r, "enable two-factor");
    let first = admin.reset("dave").await;
    let t1 = assert_ticket(&first, "first reset with two-factor");
    assert_eq!(admin.generation("dave").await, g1 + 1);
    let second = admin.reset("dave").await;
    let t2 = assert_ticket(&second, "second reset with two-factor");
    assert_ne!(t1, t2);
    assert_eq!(admin.generation("dave").await, g1 + 2);
    h.shutdown().await;
}

#[tokio::test]
async fn malformed_account_ids_and_serials_are_400() {
    let h = Harness::start().await;
    let admin = h.admin();
    let long = "a".repeat(129);
    for path in [
        "/v1/accounts/a%20b".to_string(),
        "/v1/accounts/%C3%A9t%C3%A9".to_string(),
        format!("/v1/accounts/{long}"),
        "/v1/accounts/a%2Fb".to_string(),
    ] {
        assert_error(&admin.get(&path).await, 400, &path);
        assert_error(
            &admin.post(&format!("{path}/reset"), None).await,
            400,
            &path,
        );
    }
    for serial in ["zz", "12g4", "-1"] {
        let path = format!("/v1/certificates/{serial}");
        assert_error(&admin.get(&path).await, 400, &path);
        let r = admin
            .post(
                &format!("{path}/revoke"),
                Some(json!({"reason": "keyCompromise"})),
            )
            .await;
        assert_error(&r, 400, &path);
    }
    let r = admin
        .post(
            "/v1/certificates/0a1b/revoke",
            Some(json!({"reason": "bored"})),
        )
        .await;
    assert_error(&r, 400, "unknown revocation reason");
    let r = admin
        .post("/v1/certificates/0a1b/revoke", Some(json!("not an object")))
        .await;
    assert_error(&r, 400, "malformed JSON body");
    h.shutdown().await;
}

#[tokio::test]
async fn revoke_shows_in_status_and_refuses_the_certificate() {
    let h = Harness::start().await;
    let admin = h.admin();
    let alice = h.pki.client("alice");
    assert_eq!(data_plane_get(&h, &alice, "/app").await.status, 200);

    admin.revoke(&alice.serial).await;
    // Idempotent.
    admin.revoke(&alice.serial).await;

    let r = admin
        .get(&format!("/v1/certificates/{}", alice.serial))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(says_revoked(&v), "status after revoke: {v}");
    assert!(
        v.to_string().contains("keyCompromise"),
        "reason missing from {v}"
    );

    // openssl's AB:CD:… form names the same certificate.
    let r = admin
        .get(&format!("/v1/certificates/{}", alice.serial_openssl()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(says_revoked(&r.json()), "openssl-form status: {}", r.text());

    let r = data_plane_get(&h, &alice, "/app").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "revoked");

    // Revoking a serial never seen is allowed (revocation may precede first sight) and sticks.
    let later = h.pki.client("later");
    let path = format!("/v1/certificates/{}/revoke", later.serial_openssl());
    let r = admin.post(&path, Some(json!({}))).await;
    assert_2xx(
        &r,
        "revoke before first sight, openssl form, default reason",
    );
    let r = data_plane_get(&h, &later, "/app").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "revoked");
    h.shutdown().await;
}

#[tokio::test]
async fn revocation_and_reset_survive_a_restart() {
    let mut h = Harness::start().await;
    let alice = h.pki.client("alice");
    let bob = h.pki.client("bob");
    let carol = h.pki.client("carol");
    h.admin().revoke(&alice.serial).await;
    h.admin().reset("carol").await;
    let generation = h.admin().generation("carol").await;

    h.restart().await;

    let r = data_plane_get(&h, &alice, "/app").await;
    assert_eq!(r.status, 403, "revoked cert after restart: {}", r.text());
    assert_eq!(r.json()["error"], "revoked");
    assert_eq!(
        data_plane_get(&h, &bob, "/app").await.status,
        200,
        "bob after restart"
    );
    let r = h
        .admin()
        .get(&format!("/v1/certificates/{}", alice.serial))
        .await;
    assert!(
        says_revoked(&r.json()),
        "status after restart: {}",
        r.text()
    );
    assert_eq!(h.admin().generation("carol").await, generation);
    let r = data_plane_get(&h, &carol, "/app").await;
    assert_eq!(r.status, 403, "pre-reset cert after restart: {}", r.text());
    assert_eq!(r.json()["error"], "reset");
    h.shutdown().await;
}
