//! Configuration reload: a good change applies to the next request (also on an open
//! connection), a broken file keeps the last good configuration, restart-only keys are
//! refused whole, and a rotated server certificate is picked up from the file watcher
//! while an open connection keeps working.

mod support;

use std::time::Duration;

use support::{Harness, LeafSpec, STEP, sample, within};

#[tokio::test]
async fn new_public_route_applies_to_the_next_request_on_an_open_connection() {
    let mut h = Harness::start().await;
    let mut conn = within("connect", h.raw(None).connect())
        .await
        .expect("handshake")
        .into_http1()
        .await;
    assert_eq!(
        conn.get("/newly-public/x").await.status,
        403,
        "protected before the reload"
    );

    h.rewrite_config(|o| o.public.push("/newly-public".into()));
    h.reload().await.expect("reload");

    let r = conn.get("/newly-public/x").await;
    assert_eq!(r.status, 200, "same connection, new config: {}", r.text());
    let m = h.metrics_text().await;
    assert!(
        sample(&m, "certgate_config_reloads_total{result=\"success\"}").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "certgate_config_last_reload_success"),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn broken_file_keeps_the_last_good_configuration() {
    let h = Harness::start().await;
    let good = std::fs::read_to_string(&h.config_path).expect("config");
    h.write_config_text("listen: [this is not an address\n");
    let err = h.reload().await.expect_err("a broken file must not apply");
    let msg = err.to_string();
    assert!(msg.contains("certgate.yaml"), "error names the file: {msg}");

    let client = h.client(None);
    let r = within("GET /public", client.get(h.url("/public/x")).send())
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "still serving with the old configuration");
    let m = h.metrics_text().await;
    // At least this reload; the file watcher may have tried the broken file too.
    assert!(
        sample(&m, "certgate_config_reloads_total{result=\"failure\"}").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "certgate_config_last_reload_success"),
        Some(0.0),
        "{m}"
    );

    // Fixing the file recovers.
    h.write_config_text(&good);
    h.reload().await.expect("reload of the fixed file");
    let m = h.metrics_text().await;
    assert_eq!(
        sample(&m, "certgate_config_last_reload_success"),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn restart_only_keys_are_refused_not_half_applied() {
    let h = Harness::start().await;
    let text = std::fs::read_to_string(&h.config_path).expect("config");
    let changed = text
        .replacen("listen: \"127.0.0.1:0\"", "listen: \"127.0.0.1:1\"", 1)
        .replace(
            "  public: [\"/public\"]",
            "  public: [\"/public\", \"/other\"]",
        );
    assert_ne!(
        changed, text,
        "test setup: the listen and public lines are in the file"
    );
    h.write_config_text(&changed);
    let err = h
        .reload()
        .await
        .expect_err("listen cannot change without a restart");
    assert!(err.to_string().contains("listen"), "{err}");
    // Nothing of the file was applied: /other is still protected.
    let client = h.client(None);
    let r = within("GET /other", client.get(h.url("/other")).send())
        .await
        .expect("request");
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn rotated_server_certificate_is_picked_up_and_open_connections_survive() {
    let h = Harness::start().await;
    let alice = h.pki.client_ca.issue(&LeafSpec::account("alice"));
    let raw = h.raw(Some(&alice));
    let first = within("connect", raw.connect()).await.expect("handshake");
    let old_leaf = first
        .stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("server cert")[0]
        .to_vec();
    let mut open = first.into_http1().await;
    assert_eq!(open.get("/app").await.status, 200);

    // Rotate: a new server certificate from the same server CA, written over the file.
    let new_server = h.pki.server_ca.issue(&LeafSpec::server());
    h.write_file("pki/server.key", &new_server.key_pem, 0o600);
    h.write_file(
        "pki/server.pem",
        format!("{}{}", new_server.cert_pem, h.pki.server_ca.cert_pem),
        0o644,
    );

    // The file watcher reloads on its own.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let m = h.metrics_text().await;
        if sample(&m, "certgate_config_reloads_total{result=\"success\"}").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload after the certificate changed:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A new handshake presents the new certificate (a fresh client: no resumption).
    let fresh = h.raw(Some(&alice));
    let second = within("connect", fresh.connect())
        .await
        .expect("handshake with the new certificate");
    let new_leaf = second
        .stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("server cert")[0]
        .to_vec();
    assert_ne!(new_leaf, old_leaf, "the rotated certificate is served");
    assert_eq!(new_leaf, new_server.der);

    // The connection opened before the rotation still works.
    assert_eq!(open.get("/app").await.status, 200);
}
