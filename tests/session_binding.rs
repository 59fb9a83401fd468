//! `identity.session_cookie` (README "Sessions stay with the certificate"): the
//! application's session cookie is bound to the account whose certificate received it, in
//! the state store, so every instance refuses it with another account's certificate, and a
//! revocation or reset drops the binding. Two instances on one real `redis-server`, a real
//! upstream that sets and reads the cookie, real TLS clients with certificates made here.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use support::redis::RedisServer;
use support::upstream::Echo;
use support::{H1, Harness, Leaf, Options, RawClient, STEP, metric, within};

async fn open(listen: SocketAddr, ca: &CertificateDer<'static>, leaf: Option<&Leaf>) -> H1 {
    RawClient::new(listen, ca, leaf)
        .connect()
        .await
        .expect("handshake")
        .into_http1()
        .await
}

/// `GET path` with `cookie` on a new connection; the answer and, when the upstream saw the
/// request, the `Cookie` header it received ("" for none).
async fn get(
    listen: SocketAddr,
    ca: &CertificateDer<'static>,
    leaf: Option<&Leaf>,
    path: &str,
    cookie: &str,
) -> (u16, String, Option<String>) {
    let mut c = open(listen, ca, leaf).await;
    let r = c
        .send("GET", path, &[("cookie", cookie)])
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let seen = (r.status == 200).then(|| Echo::parse(&r.body).all("cookie").join("; "));
    (r.status, r.text(), seen)
}

/// Polls `GET path` with `cookie` until the upstream receives only `left` of it (the
/// binding was dropped); every answer must be 200.
async fn until_forwarded_only(
    listen: SocketAddr,
    ca: &CertificateDer<'static>,
    leaf: &Leaf,
    path: &str,
    cookie: &str,
    left: &str,
) {
    let deadline = Instant::now() + STEP;
    loop {
        let (status, text, seen) = get(listen, ca, Some(leaf), path, cookie).await;
        assert_eq!(status, 200, "{text}");
        if seen.as_deref() == Some(left) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: still forwarded: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mismatches(text: &str) -> bool {
    text.contains("session_mismatch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_session_cookie_stays_with_the_account_that_received_it_on_every_instance() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let h = Harness::with(Options {
        redis_url: Some(redis.url()),
        public: vec!["/public".into(), "/login".into()],
        extra_state: vec!["  timeout: 300ms".into()],
        extra: "identity:\n  session_cookie: sid\n".into(),
        ..Options::default()
    })
    .await;
    let b = within("start B", certgate::app::start(h.load_config()))
        .await
        .expect("second instance");
    let ca = &h.pki.server_ca.der;
    let (a, bl) = (h.listen(), b.listen);
    let alice = h.pki.client("alice");
    let alice_laptop = h.pki.client("alice");
    let bob = h.pki.client("bob");

    // Alice signs in on A (a public page); the app sets its session cookie.
    let mut c = open(a, ca, Some(&alice)).await;
    let r = c
        .send("GET", "/login?set-sid=S1", &[])
        .await
        .expect("login");
    assert_eq!(r.status, 200, "{}", r.text());
    let set = r.headers.get("set-cookie").expect("the app's Set-Cookie");
    assert!(set.to_str().unwrap().starts_with("sid=S1"), "{set:?}");

    // Bob presents alice's cookie on B with his own valid certificate: refused, never
    // forwarded, counted.
    let before = h.upstream.seen_with_prefix("/app/stolen").len();
    let (status, text, _) = get(bl, ca, Some(&bob), "/app/stolen", "sid=S1; theme=dark").await;
    assert_eq!(status, 403, "{text}");
    assert!(mismatches(&text), "{text}");
    assert_eq!(h.upstream.seen_with_prefix("/app/stolen").len(), before);
    let (status, text, _) = get(bl, ca, Some(&bob), "/login/again", "sid=S1").await;
    assert_eq!(status, 403, "a public route refuses it too: {text}");
    assert_eq!(
        metric(
            b.metrics,
            "certgate_requests_total{decision=\"session_mismatch\"}"
        )
        .await,
        2.0
    );

    // Alice's own certificates (either of them) carry it, on both instances.
    for (listen, leaf) in [(bl, &alice), (a, &alice_laptop)] {
        let (status, text, seen) =
            get(listen, ca, Some(leaf), "/app/mine", "sid=S1; theme=dark").await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(seen.as_deref(), Some("sid=S1; theme=dark"));
    }
    // Without any certificate the bound cookie is not forwarded; the rest is.
    let (status, _, seen) = get(bl, ca, None, "/public/x", "sid=S1; theme=dark").await;
    assert_eq!(status, 200);
    assert_eq!(seen.as_deref(), Some("theme=dark"));

    // A cookie certgate never saw set is bound on its first allowed protected request.
    let (status, _, seen) = get(bl, ca, Some(&bob), "/app/first", "sid=S4").await;
    assert_eq!(status, 200);
    assert_eq!(seen.as_deref(), Some("sid=S4"));
    let (status, text, _) = get(a, ca, Some(&alice), "/app/first", "sid=S4").await;
    assert_eq!(
        status, 403,
        "bound to bob by first use, on the other instance: {text}"
    );
    assert!(mismatches(&text), "{text}");

    // Revoking the certificate a session was bound through drops the binding: alice's other
    // certificate no longer carries it (the app sees no session and signs her in again).
    let mut c = open(a, ca, Some(&alice_laptop)).await;
    assert_eq!(
        c.send("GET", "/login?set-sid=S2", &[])
            .await
            .expect("login")
            .status,
        200
    );
    h.admin().revoke(&alice_laptop.serial).await;
    until_forwarded_only(bl, ca, &alice, "/app/after-revoke", "sid=S2; x=1", "x=1").await;
    // S1 was bound through alice's first certificate, which stays valid.
    let (_, _, seen) = get(bl, ca, Some(&alice), "/app/still", "sid=S1").await;
    assert_eq!(seen.as_deref(), Some("sid=S1"));

    // A reset drops every binding of the account.
    let mut c = open(bl, ca, Some(&bob)).await;
    assert_eq!(
        c.send("GET", "/login?set-sid=S3", &[])
            .await
            .expect("login")
            .status,
        200
    );
    h.admin().reset("bob").await;
    until_forwarded_only(bl, ca, &bob, "/login/after-reset", "sid=S3; y=2", "y=2").await;
    // The binding is in Redis as a hash of the value, never the value itself.
    let keys: Vec<String> = redis.cmd(&["KEYS", "*session:*"]);
    assert!(keys.len() >= 4, "{keys:?}");
    assert!(
        keys.iter().all(|k| !k.contains("S1") && !k.contains("S2")),
        "{keys:?}"
    );

    // Store gone: a cookie it cannot judge is refused, not forwarded on a guess.
    redis.kill();
    let (status, text, _) = get(bl, ca, Some(&alice), "/login/outage", "sid=S9").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("store_unavailable"), "{text}");
}
