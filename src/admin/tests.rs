//! The admin API's handlers, routes and listeners, driven through `handle` and over real
//! loopback HTTP.
//!
//! Why this file is over 800 lines: one test per route, method, error code and audit line,
//! all on one fixture; split by route, each file would repeat the fixture.

use std::sync::Mutex;

use http::HeaderMap;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{self, AdminCommand, ClientError};
use super::*;
use crate::config::{CacheConfig, OnError, StateBackend, StateConfig};
use crate::server::plain::DRAIN_TIMEOUT;
use crate::state::memory::MemoryStore;
use crate::state::{CertRecord, StateStore, TicketRecord};
use http::header::{AUTHORIZATION, CONTENT_LENGTH};

const TOKEN: &str = "test-admin-token-0123456789";
/// What a failing store reports; it must never reach a client.
const INTERNAL: &str = "redis 10.1.2.3:6379 refused";

struct Harness {
    store: Arc<MemoryStore>,
    state: Arc<AdminState>,
    dir: tempfile::TempDir,
}

fn harness(enrollment: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let store = Arc::new(MemoryStore::new());
    let metrics = Metrics::new();
    let cfg = StateConfig {
        backend: StateBackend::Embedded {
            path: dir.path().join("unused.db"),
        },
        cache: CacheConfig {
            ttl: Duration::from_secs(10),
            max_entries: 1000,
        },
        on_error: OnError::FailClosed,
        max_stale: Duration::from_secs(300),
    };
    let cache = Arc::new(StateCache::new(store.clone(), &cfg, metrics.clone()));
    let enrollment = enrollment.then(|| EnrollmentInfo {
        public_url: "https://gw.example:8443".into(),
        ticket_ttl: Duration::from_secs(3600),
    });
    let state = Arc::new(AdminState::new(cache, metrics, token_file, enrollment));
    Harness { store, state, dir }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn send_with(
    h: &Harness,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(a) = auth {
        b = b.header(AUTHORIZATION, a);
    }
    let resp = handle(&h.state, b.body(Full::new(Bytes::from(body))).unwrap()).await;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    Answer {
        status: parts.status,
        headers: parts.headers,
        json,
    }
}

async fn send(h: &Harness, method: Method, path: &str, body: &str) -> Answer {
    send_with(
        h,
        method,
        path,
        Some(&format!("Bearer {TOKEN}")),
        body.as_bytes().to_vec(),
    )
    .await
}

fn assert_error(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{}", a.json);
    assert_eq!(a.json["error"], code, "{}", a.json);
    assert!(
        a.json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.json
    );
    assert_eq!(a.headers[CONTENT_TYPE], JSON);
}

fn consume(h: &Harness, ticket: &str) -> Option<TicketRecord> {
    let mut data = h.store.records();
    data.tickets
        .remove(&ticket::hash(ticket))
        .filter(|t| t.expires_at > now())
}

fn cert(serial: &str, account: &str, generation: u64) -> CertRecord {
    CertRecord {
        serial: serial.into(),
        account: account.into(),
        generation,
        fingerprint: format!("fp-{serial}"),
        not_after: 1_900_000_000,
        issued_at: 1_800_000_000 + generation as i64,
        issued_from: None,
    }
}

#[test]
fn constant_time_token_compare() {
    assert!(tokens_equal("abc", "abc"));
    assert!(tokens_equal(TOKEN, TOKEN));
    assert!(!tokens_equal("abc", "abd"));
    assert!(!tokens_equal("abc", "abcd"));
    assert!(!tokens_equal("", "abc"));
    assert!(!tokens_equal("ABC", "abc"));
}

#[test]
fn bearer_header_forms() {
    let mut h = HeaderMap::new();
    assert_eq!(bearer_token(&h), None);
    h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
    assert_eq!(bearer_token(&h), Some("abc"));
    h.insert(AUTHORIZATION, HeaderValue::from_static("bearer   abc "));
    assert_eq!(bearer_token(&h), Some("abc"));
    h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
    assert_eq!(bearer_token(&h), None);
    h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
    assert_eq!(bearer_token(&h), None);
}

#[tokio::test]
async fn missing_or_wrong_token_is_401_and_changes_nothing() {
    let h = harness(true);
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic dGVzdA=="),
        Some(&*format!("Bearer {TOKEN}x")),
    ] {
        let a = send_with(&h, Method::POST, "/v1/accounts/alice/reset", auth, vec![]).await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(a.headers[WWW_AUTHENTICATE], "Bearer");
    }
    // Unknown routes do not reveal themselves without a token either.
    let a = send_with(&h, Method::GET, "/v1/nothing", None, vec![]).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(h.store.writes(), 0);
    assert!(h.store.records().accounts.is_empty());
    let text = h.state.metrics.encode();
    assert!(
        text.contains(
            r#"certgate_admin_requests_total{route="/v1/accounts/{id}/reset",status="401"} 4"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn token_file_is_reread_and_fails_closed() {
    let h = harness(true);
    let file = h.dir.path().join("admin-token");
    assert_eq!(
        send(&h, Method::GET, "/v1/accounts/nobody", "")
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    std::fs::write(&file, "  \n").unwrap();
    let a = send(&h, Method::GET, "/v1/accounts/nobody", "").await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
    // An empty presented token does not match an empty file either.
    let a = send_with(
        &h,
        Method::GET,
        "/v1/accounts/nobody",
        Some("Bearer "),
        vec![],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        send(&h, Method::GET, "/v1/accounts/nobody", "")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // Rotation takes effect on the next request, no reload needed.
    std::fs::write(&file, "rotated-token").unwrap();
    assert_eq!(
        send(&h, Method::GET, "/v1/accounts/nobody", "")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let a = send_with(
        &h,
        Method::GET,
        "/v1/accounts/nobody",
        Some("Bearer rotated-token"),
        vec![],
    )
    .await;
    assert_error(&a, StatusCode::NOT_FOUND, "account_not_found");
}

#[tokio::test]
async fn enable_two_factor_returns_a_working_ticket() {
    let h = harness(true);
    let a = send(&h, Method::POST, "/v1/accounts/alice/two-factor", "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.headers[CACHE_CONTROL], "no-store");
    assert_eq!(a.json["account"], "alice");
    assert_eq!(a.json["generation"], 1);
    assert_eq!(a.json["two_factor"], true);
    assert!(a.json["reset_at"].is_null());
    let ticket = a.json["ticket"].as_str().unwrap().to_string();
    assert_eq!(ticket.len(), 43);
    assert_eq!(
        a.json["enroll_url"],
        format!("https://gw.example:8443/.certgate/enroll?ticket={ticket}")
    );
    assert!(a.json["ticket_expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(h.store.records().accounts["alice"].two_factor);
    let t = consume(&h, &ticket).expect("the ticket is stored under its hash");
    assert_eq!((t.account.as_str(), t.generation), ("alice", 1));
    assert!(t.expires_at > now() + 3500 && t.expires_at <= now() + 3600);
    // `{}` is an acceptable body too; a second enable keeps the generation.
    let a = send(&h, Method::POST, "/v1/accounts/alice/two-factor", "{}").await;
    assert_eq!(
        (a.status, a.json["generation"].as_u64()),
        (StatusCode::OK, Some(1))
    );
}

#[tokio::test]
async fn enable_without_enrollment_says_why_there_is_no_ticket() {
    let h = harness(false);
    let a = send(&h, Method::POST, "/v1/accounts/alice/two-factor", "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["two_factor"], true);
    assert!(
        a.json.get("ticket").is_none() && a.json.get("enroll_url").is_none(),
        "{}",
        a.json
    );
    assert!(
        a.json["note"]
            .as_str()
            .unwrap()
            .contains("enrollment is disabled")
    );
    assert!(h.store.records().tickets.is_empty());
    let a = send(&h, Method::POST, "/v1/accounts/alice/tickets", "").await;
    assert_error(&a, StatusCode::CONFLICT, "enrollment_disabled");
}

#[tokio::test]
async fn reset_bumps_generation_and_voids_open_tickets() {
    let h = harness(true);
    let first = send(&h, Method::POST, "/v1/accounts/alice/two-factor", "").await;
    let old = first.json["ticket"].as_str().unwrap().to_string();
    let a = send(&h, Method::POST, "/v1/accounts/alice/reset", "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["generation"], 2);
    assert!(a.json["reset_at"].as_str().is_some());
    assert_eq!(h.store.records().accounts["alice"].generation, 2);
    assert!(
        consume(&h, &old).is_none(),
        "a reset must void the open ticket"
    );
    let new = a.json["ticket"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(consume(&h, new).map(|t| t.generation), Some(2));
    assert!(a.json["enroll_url"].as_str().unwrap().ends_with(new));
}

#[tokio::test]
async fn reset_of_an_unknown_account_creates_it_and_issues_a_ticket() {
    let h = harness(true);
    let a = send(&h, Method::POST, "/v1/accounts/bob/reset", "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        (
            a.json["generation"].as_u64(),
            a.json["two_factor"].as_bool()
        ),
        (Some(2), Some(false))
    );
    let t = a.json["ticket"]
        .as_str()
        .expect("a reset answers with a ticket");
    assert_eq!(consume(&h, t).map(|t| t.generation), Some(2));
    assert!(a.json.get("note").is_none());
}

#[tokio::test]
async fn tickets_route() {
    let h = harness(true);
    let a = send(&h, Method::POST, "/v1/accounts/carol/tickets", "").await;
    assert_error(&a, StatusCode::NOT_FOUND, "account_not_found");
    send(&h, Method::POST, "/v1/accounts/carol/reset", "").await;
    let a = send(&h, Method::POST, "/v1/accounts/carol/tickets", "").await;
    assert_error(&a, StatusCode::CONFLICT, "two_factor_disabled");
    send(&h, Method::POST, "/v1/accounts/carol/two-factor", "").await;
    let a = send(&h, Method::POST, "/v1/accounts/carol/tickets", "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["generation"], 2);
    let t = consume(&h, a.json["ticket"].as_str().unwrap()).unwrap();
    assert_eq!((t.account.as_str(), t.generation), ("carol", 2));
}

#[tokio::test]
async fn get_account() {
    let h = harness(true);
    let a = send(&h, Method::GET, "/v1/accounts/alice", "").await;
    assert_error(&a, StatusCode::NOT_FOUND, "account_not_found");

    send(&h, Method::POST, "/v1/accounts/alice/two-factor", "").await;
    h.store
        .record_certificate(cert("aa01", "alice", 1))
        .await
        .unwrap();
    h.store
        .record_certificate(cert("bb02", "alice", 2))
        .await
        .unwrap();
    h.store
        .record_certificate(cert("cc03", "mallory", 1))
        .await
        .unwrap();
    send(&h, Method::POST, "/v1/certificates/aa01/revoke", "").await;

    let a = send(&h, Method::GET, "/v1/accounts/alice", "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["account"], "alice");
    assert_eq!(a.json["two_factor"], true);
    assert!(a.json["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        a.json["certificates"],
        json!([
            {"serial": "aa01", "generation": 1, "fingerprint": "fp-aa01",
             "not_after": rfc3339(1_900_000_000), "revoked": true},
            {"serial": "bb02", "generation": 2, "fingerprint": "fp-bb02",
             "not_after": rfc3339(1_900_000_000), "revoked": false},
        ])
    );
}

#[tokio::test]
async fn account_ids_are_decoded_then_validated() {
    let h = harness(true);
    let a = send(
        &h,
        Method::POST,
        "/v1/accounts/alice%40example.com/two-factor",
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["account"], "alice@example.com");
    for bad in [
        "a%20b",
        "a%2Fb",
        "a%2F..",
        "%FF",
        "",
        "a%00",
        "%C3%A9",
        &"x".repeat(129),
    ] {
        let a = send(&h, Method::POST, &format!("/v1/accounts/{bad}/reset"), "").await;
        assert_error(&a, StatusCode::BAD_REQUEST, "invalid_account");
        let a = send(&h, Method::GET, &format!("/v1/accounts/{bad}"), "").await;
        assert_error(&a, StatusCode::BAD_REQUEST, "invalid_account");
    }
    assert_eq!(h.store.records().accounts.len(), 1);
    // `..` matches the account pattern; it is an id here, never a path step.
    let a = send(&h, Method::GET, "/v1/accounts/%2E%2E", "").await;
    assert_error(&a, StatusCode::NOT_FOUND, "account_not_found");
}

#[tokio::test]
async fn revoke_unknown_serial_is_idempotent() {
    let h = harness(true);
    let a = send(
        &h,
        Method::POST,
        "/v1/certificates/0a0b/revoke",
        r#"{"reason":"keyCompromise"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["serial"], "0a0b");
    assert_eq!(a.json["revoked"], true);
    assert_eq!(a.json["reason"], "keyCompromise");
    assert!(a.json["account"].is_null());
    let revoked_at = a.json["revoked_at"].clone();
    // Backdate the record: a second revoke must return it untouched, not a new one.
    h.store
        .records()
        .revoked
        .get_mut("0a0b")
        .unwrap()
        .revoked_at = 1_700_000_000;
    let b = send(
        &h,
        Method::POST,
        "/v1/certificates/0a0b/revoke",
        r#"{"reason":"superseded"}"#,
    )
    .await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(b.json["revoked_at"], rfc3339(1_700_000_000));
    assert_eq!(b.json["reason"], "keyCompromise");
    assert!(revoked_at.as_str().unwrap().ends_with('Z'));
    let g = send(&h, Method::GET, "/v1/certificates/0a0b", "").await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(
        (g.json["revoked"].as_bool(), g.json["account"].is_null()),
        (Some(true), true)
    );
}

#[tokio::test]
async fn revoke_accepts_openssl_serial_form_and_uses_the_registry() {
    let h = harness(true);
    h.store
        .record_certificate(cert("abcd", "alice", 1))
        .await
        .unwrap();
    for path in [
        "/v1/certificates/AB:CD/revoke",
        "/v1/certificates/AB%3ACD/revoke",
        "/v1/certificates/00ABCD/revoke",
    ] {
        let a = send(&h, Method::POST, path, "").await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.json);
        assert_eq!(a.json["serial"], "abcd");
        assert_eq!(a.json["reason"], "unspecified");
        assert_eq!(a.json["account"], "alice");
    }
    let r = h.store.records().revoked["abcd"].clone();
    assert_eq!(r.not_after, Some(1_900_000_000));
    assert_eq!(h.store.records().revoked.len(), 1);
}

#[tokio::test]
async fn get_certificate() {
    let h = harness(true);
    let a = send(&h, Method::GET, "/v1/certificates/beef", "").await;
    assert_error(&a, StatusCode::NOT_FOUND, "certificate_not_found");
    h.store
        .record_certificate(cert("beef", "alice", 3))
        .await
        .unwrap();
    let a = send(&h, Method::GET, "/v1/certificates/BE:EF", "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json,
        json!({
            "serial": "beef", "account": "alice", "generation": 3, "fingerprint": "fp-beef",
            "not_after": rfc3339(1_900_000_000), "issued_at": rfc3339(1_800_000_003),
            "revoked": false, "reason": null, "revoked_at": null,
        })
    );
    let a = send(&h, Method::GET, "/v1/certificates/xyz", "").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_serial");
}

#[tokio::test]
async fn bad_bodies_are_400() {
    let h = harness(true);
    let a = send(&h, Method::POST, "/v1/certificates/01/revoke", "{not json").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a = send(
        &h,
        Method::POST,
        "/v1/certificates/01/revoke",
        r#"{"reason":"stolen"}"#,
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_reason");
    let msg = a.json["message"].as_str().unwrap();
    assert!(
        msg.contains("keyCompromise") && msg.contains("superseded"),
        "{msg}"
    );
    let a = send(
        &h,
        Method::POST,
        "/v1/certificates/01/revoke",
        r#"{"reason":7}"#,
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a = send(
        &h,
        Method::POST,
        "/v1/certificates/01/revoke",
        r#"{"reasn":"superseded"}"#,
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a = send(
        &h,
        Method::POST,
        "/v1/accounts/alice/two-factor",
        r#"{"x":1}"#,
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let a = send(&h, Method::POST, "/v1/certificates/zz/revoke", "").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_serial");
    // Reason names are matched case-insensitively.
    let a = send(
        &h,
        Method::POST,
        "/v1/certificates/01/revoke",
        r#"{"reason":"cacompromise"}"#,
    )
    .await;
    assert_eq!(
        (a.status, a.json["reason"].as_str()),
        (StatusCode::OK, Some("cACompromise"))
    );
    assert_eq!(h.store.records().revoked.len(), 1);
    assert!(h.store.records().accounts.is_empty());
}

#[tokio::test]
async fn oversized_body_is_413() {
    let h = harness(true);
    let big = format!(
        r#"{{"reason":"superseded","pad":"{}"}}"#,
        "x".repeat(MAX_BODY_BYTES)
    );
    let a = send_with(
        &h,
        Method::POST,
        "/v1/certificates/01/revoke",
        Some(&format!("Bearer {TOKEN}")),
        big.into_bytes(),
    )
    .await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Exactly at the limit is read (and then refused for its content, not its size).
    let at_limit = vec![b' '; MAX_BODY_BYTES];
    let a = send_with(
        &h,
        Method::POST,
        "/v1/certificates/01/revoke",
        Some(&format!("Bearer {TOKEN}")),
        at_limit,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    // A declared length over the limit is refused before reading.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/certificates/02/revoke")
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(CONTENT_LENGTH, "10000000")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(
        handle(&h.state, req).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert!(!h.store.records().revoked.contains_key("02"));
}

#[tokio::test]
async fn unknown_route_and_wrong_method() {
    let h = harness(true);
    for path in [
        "/",
        "/v1",
        "/v1/accounts",
        "/v1/accounts/alice/other",
        "/v2/accounts/alice",
        "/v1/accounts/alice/",
    ] {
        let a = send(&h, Method::GET, path, "").await;
        assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    }
    let a = send(&h, Method::GET, "/v1/accounts/alice/reset", "").await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(a.headers[ALLOW], "POST");
    let a = send(&h, Method::DELETE, "/v1/accounts/alice", "").await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(a.headers[ALLOW], "GET");
    let a = send_with(&h, Method::POST, "/healthz", None, vec![]).await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(h.store.writes(), 0);
}

#[tokio::test]
async fn store_failure_is_503_without_internals() {
    let h = harness(true);
    h.store.set_failing(Some(INTERNAL));
    for (method, path) in [
        (Method::POST, "/v1/accounts/alice/two-factor"),
        (Method::POST, "/v1/accounts/alice/reset"),
        (Method::POST, "/v1/accounts/alice/tickets"),
        (Method::GET, "/v1/accounts/alice"),
        (Method::POST, "/v1/certificates/01/revoke"),
        (Method::GET, "/v1/certificates/01"),
    ] {
        let a = send(&h, method, path, "").await;
        assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
        assert!(!a.json.to_string().contains("10.1.2.3"), "{}", a.json);
    }
}

#[tokio::test]
async fn probes_need_no_token() {
    let h = harness(true);
    let a = send_with(&h, Method::GET, "/healthz", None, vec![]).await;
    assert_eq!(
        (a.status, a.json.clone()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    // Healthz does not depend on the store.
    h.store.set_failing(Some(INTERNAL));
    assert_eq!(
        send_with(&h, Method::GET, "/healthz", None, vec![])
            .await
            .status,
        StatusCode::OK
    );
    h.store.set_failing(None);
    let a = send_with(&h, Method::GET, "/readyz", None, vec![]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(h.state.cache.ready());
}

#[tokio::test]
async fn readyz_is_503_until_the_store_answers() {
    let h = harness(true);
    h.store.set_failing(Some(INTERNAL));
    let a = send_with(&h, Method::GET, "/readyz", None, vec![]).await;
    assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    let req = Request::builder()
        .uri("/readyz")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = handle_metrics(&h.state.metrics, &h.state.cache, &Default::default(), req).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The probe pings the store itself, so readiness follows once it answers.
    h.store.set_failing(None);
    assert_eq!(
        send_with(&h, Method::GET, "/readyz", None, vec![])
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn readyz_is_503_shutting_down_in_the_lame_duck() {
    let h = harness(true);
    let probe = || {
        Request::builder()
            .uri("/readyz")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let lame = crate::core::phase::LameDuck::default();
    let resp = handle_metrics(&h.state.metrics, &h.state.cache, &lame, probe()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    lame.begin();
    let resp = handle_metrics(&h.state.metrics, &h.state.cache, &lame, probe()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("\"shutting_down\""),
        "{body:?}"
    );
    // /healthz stays 200: the process still serves.
    let health = Request::builder()
        .uri("/healthz")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = handle_metrics(&h.state.metrics, &h.state.cache, &lame, health).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn metrics_handler() {
    let h = harness(true);
    send(&h, Method::GET, "/v1/accounts/nobody", "").await;
    let req = Request::builder()
        .uri("/metrics")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = handle_metrics(&h.state.metrics, &h.state.cache, &Default::default(), req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], OPENMETRICS);
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains(r#"certgate_admin_requests_total{route="/v1/accounts/{id}",status="404"} 1"#),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    for (method, path, status) in [
        (Method::GET, "/healthz", StatusCode::OK),
        (Method::GET, "/readyz", StatusCode::OK),
        (Method::GET, "/v1/accounts/alice", StatusCode::NOT_FOUND),
        (Method::POST, "/metrics", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            handle_metrics(&h.state.metrics, &h.state.cache, &Default::default(), req)
                .await
                .status(),
            status,
            "{path}"
        );
    }
}

/// Collects formatted log output for one test.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn one_audit_line_per_change_without_secrets() {
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = harness(true);
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/v1/accounts/alice/two-factor")
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut()
        .insert(Peer("127.0.0.9:5555".parse().unwrap()));
    let resp = handle(&h.state, req).await;
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let ticket = body["ticket"].as_str().unwrap().to_string();
    send(
        &h,
        Method::POST,
        "/v1/certificates/AB:CD/revoke",
        r#"{"reason":"keyCompromise"}"#,
    )
    .await;
    send(&h, Method::GET, "/v1/accounts/alice", "").await;
    send_with(
        &h,
        Method::POST,
        "/v1/accounts/alice/reset",
        Some("Bearer nope"),
        vec![],
    )
    .await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("certgate::audit"))
        .collect();
    assert_eq!(audit.len(), 2, "{text}");
    assert!(
        audit[0].contains("action=\"enable_two_factor\"")
            || audit[0].contains("action=enable_two_factor"),
        "{text}"
    );
    assert!(
        audit[0].contains("alice") && audit[0].contains("127.0.0.9:5555"),
        "{text}"
    );
    assert!(audit[0].contains("ticket_issued=true"), "{text}");
    assert!(
        audit[1].contains("revoke")
            && audit[1].contains("abcd")
            && audit[1].contains("keyCompromise"),
        "{text}"
    );
    assert!(
        !text.contains(&ticket),
        "the ticket leaked into the logs:\n{text}"
    );
    assert!(
        !text.contains(TOKEN),
        "the token leaked into the logs:\n{text}"
    );
    assert!(text.contains("admin request refused"), "{text}");
}

/// Serves `h`'s admin API on a fresh loopback port; returns the base URL, a shutdown
/// trigger and the server task.
async fn serve_on_loopback(
    h: &Harness,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_admin(listener, h.state.clone(), async {
        let _ = rx.await;
    }));
    (url, tx, task)
}

#[tokio::test]
async fn admin_client_against_a_served_listener() {
    let h = harness(true);
    let (url, stop, task) = serve_on_loopback(&h).await;

    let enable = AdminCommand::Enable {
        account: "alice@example.com".into(),
    };
    let v = client::run(&url, TOKEN, &enable).await.unwrap();
    let ticket = v["ticket"].as_str().unwrap();
    let text = client::render(&enable, &v);
    assert!(
        text.contains("Two-factor enabled for account alice@example.com (generation 1)"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "https://gw.example:8443/.certgate/enroll?ticket={ticket}"
        )),
        "{text}"
    );
    assert!(consume(&h, ticket).is_some());

    h.store
        .record_certificate(cert("abcd", "alice@example.com", 1))
        .await
        .unwrap();
    let v = client::revoke(&url, TOKEN, "AB:CD", Some("keyCompromise"))
        .await
        .unwrap();
    assert_eq!(
        (v.serial.as_str(), v.reason.as_str()),
        ("abcd", "keyCompromise")
    );

    let reset = client::reset(&url, TOKEN, "alice@example.com")
        .await
        .unwrap();
    assert_eq!(reset.account.generation, 2);
    let status_cmd = AdminCommand::Status {
        account: "alice@example.com".into(),
    };
    let v = client::run(&url, TOKEN, &status_cmd).await.unwrap();
    let text = client::render(&status_cmd, &v);
    assert!(
        text.contains("generation  2") && text.contains("two-factor  enabled"),
        "{text}"
    );
    assert!(text.contains("abcd") && text.contains("revoked"), "{text}");

    let v = client::ticket(&url, TOKEN, "alice@example.com")
        .await
        .unwrap();
    assert_eq!(v.account.generation, 2);
    let v = client::certificate_status(&url, TOKEN, "abcd")
        .await
        .unwrap();
    assert!(v.revoked);

    // Errors: the server's code and message come through; a bad token is named as such.
    let err = client::status(&url, TOKEN, "nobody").await.unwrap_err();
    match &err {
        ClientError::Api { status, code, .. } => {
            assert_eq!(
                (*status, code.as_str()),
                (StatusCode::NOT_FOUND, "account_not_found")
            )
        }
        other => panic!("{other:?}"),
    }
    let err = client::status(&url, "wrong", "alice").await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized));
    assert_eq!(
        err.to_string(),
        "admin token rejected (check admin.token_file)"
    );
    let (status, v) = client::call(&url, "", Method::GET, "/healthz", None)
        .await
        .unwrap();
    assert_eq!((status, v), (StatusCode::OK, json!({"status": "ok"})));

    // Shutdown: the server returns promptly and stops accepting.
    stop.send(()).unwrap();
    tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
    let err = client::call(&url, TOKEN, Method::GET, "/healthz", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
}

/// Sends raw bytes over one connection and returns the whole answer.
async fn raw_http(addr: &str, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn oversized_body_over_http_is_413() {
    let h = harness(true);
    let (url, stop, task) = serve_on_loopback(&h).await;
    let addr = url.trim_start_matches("http://");
    let head = format!(
        "POST /v1/certificates/01/revoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        MAX_BODY_BYTES + 1
    );
    let answer = raw_http(addr, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn in_flight_request_finishes_during_shutdown() {
    let h = harness(true);
    let (url, stop, task) = serve_on_loopback(&h).await;
    let addr = url.trim_start_matches("http://").to_string();
    // Send the head now and the body after shutdown has begun.
    let body = r#"{"reason":"superseded"}"#;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/certificates/0c/revoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(body.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        h.store.records().revoked["0c"].reason,
        RevocationReason::Superseded
    );
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn metrics_listener_over_http() {
    let h = harness(true);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_metrics(
        listener,
        h.state.metrics.clone(),
        h.state.cache.clone(),
        Default::default(),
        async {
            let _ = rx.await;
        },
    ));
    let answer = raw_http(
        &addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("content-type: {OPENMETRICS}")),
        "{answer}"
    );
    assert!(answer.contains("certgate_state_store_up"), "{answer}");
    let answer = raw_http(
        &addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains(r#"{"status":"ok"}"#),
        "{answer}"
    );
    let answer = raw_http(
        &addr,
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The admin API is not on this listener.
    let answer = raw_http(
        &addr,
        b"GET /v1/accounts/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    tx.send(()).unwrap();
    task.await.unwrap();
}
