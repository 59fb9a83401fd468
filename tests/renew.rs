//! Renewal by the certificate's holder (`/.certgate/certificate`, `POST /.certgate/renew`)
//! over real mTLS: the new certificate keeps account and generation, the old one works
//! until the new one is first used and is then revoked as superseded; what is refused and
//! why; the page and the application's renewal notice.

mod support;

use std::time::Duration;

use support::enroll::{self as en, client_with, first_pem};
use support::{Echo, Harness, Options, Prepared, Resp};
use x509_parser::prelude::*;

/// A gateway whose enrollment settings end with `extra` lines (e.g. `renew_before`).
async fn gateway(extra: &str) -> Harness {
    let p = Prepared::new(Options::default()).await;
    let yaml = std::fs::read_to_string(&p.config_path).unwrap().replace(
        "enrollment:\n  enabled: true\n",
        &format!("enrollment:\n  enabled: true\n{extra}"),
    );
    std::fs::write(&p.config_path, yaml).unwrap();
    p.start().await
}

/// Enrolls `account` by CSR: (certificate PEM, key PEM).
async fn enrolled(h: &Harness, account: &str) -> (String, String) {
    let ticket = en::enable(h, account).await;
    let (key, csr) = en::p256_key_and_csr();
    let r = en::csr(h, Some(&ticket), csr.into_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    (first_pem(&r.text()), key)
}

async fn renew(client: &reqwest::Client, h: &Harness, csr: &str) -> Resp {
    let r = client
        .post(h.url("/.certgate/renew"))
        .header("content-type", "application/pkcs10")
        .body(csr.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

fn uris(pem: &str) -> Vec<String> {
    let der = en::pem_to_der(pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::URI(u) = n {
                out.push(u.to_string());
            }
        }
    }
    out
}

fn serial_of(pem: &str) -> String {
    let der = en::pem_to_der(pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    cert.raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_the_account_and_retires_the_old_certificate_at_first_use() {
    // Fresh certificates are valid for a year: with 400 days they are due at once.
    let h = gateway("  renew_before: 400d\n").await;
    let (old_pem, old_key) = enrolled(&h, "alice").await;
    let old = client_with(&h, &old_pem, &old_key);
    let old_serial = serial_of(&old_pem);

    // The application is told the certificate is due, with the page's address.
    let r = en::get(&old, &h.url("/app")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        Echo::parse(&r.body).one("x-client-cert-renew"),
        "https://localhost:8443/.certgate/certificate"
    );

    // The page offers renewal.
    let page = en::get(&old, &h.url("/.certgate/certificate")).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    assert!(html.contains("Managing your client certificate"), "{html}");
    assert!(html.contains(&old_serial), "{html}");
    assert!(
        html.contains("to <span id=\"issued-from\">127.0.0.1</span>"),
        "the page says where the certificate was issued to: {html}"
    );
    assert!(html.contains("id=\"renew\""), "{html}");
    assert!(
        html.contains("data-endpoint=\"/.certgate/renew\""),
        "{html}"
    );
    assert_eq!(page.header("cache-control").as_deref(), Some("no-store"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");

    // Renewal with a CSR over the old certificate: no ticket.
    let (new_key, csr) = en::p256_key_and_csr();
    let r = renew(&old, &h, &csr).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/pem-certificate-chain")
    );
    let new_pem = first_pem(&r.text());
    let new_serial = serial_of(&new_pem);
    assert_ne!(new_serial, old_serial);
    let names = uris(&new_pem);
    assert!(
        names.contains(&"urn:certgate:account:alice".to_string()),
        "{names:?}"
    );
    let generation = names
        .iter()
        .find(|u| u.starts_with("urn:certgate:generation:"));
    assert!(generation.is_some(), "{names:?}");
    assert_eq!(
        generation,
        uris(&old_pem)
            .iter()
            .find(|u| u.starts_with("urn:certgate:generation:")),
        "same generation"
    );
    assert!(
        names.contains(&format!("urn:certgate:renews:{old_serial}")),
        "{names:?}"
    );

    // Until the new one is used, the old one still works (the download may have failed).
    let r = en::get(&old, &h.url("/app")).await;
    assert_eq!(
        r.status, 200,
        "the old certificate works until the new one is used"
    );

    // The first use of the new certificate retires the old one.
    let new = client_with(&h, &new_pem, &new_key);
    let r = en::get(&new, &h.url("/app")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = Echo::parse(&r.body);
    assert_eq!(echo.one("x-client-account"), "alice");
    assert_eq!(echo.one("x-client-cert-serial"), new_serial);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = h
            .admin()
            .get(&format!("/v1/certificates/{old_serial}"))
            .await;
        if r.text().contains("superseded") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old certificate was not revoked as superseded: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh connection with the old certificate is refused as revoked.
    let old_again = client_with(&h, &old_pem, &old_key);
    let r = en::get(&old_again, &h.url("/app")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "revoked", "{}", r.text());
    // The new one keeps working.
    let r = en::get(&new, &h.url("/app")).await;
    assert_eq!(r.status, 200);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_is_refused_with_reasons() {
    // The default: due 30 days before expiry, so a fresh certificate is not.
    let h = gateway("").await;
    let (pem, key) = enrolled(&h, "alice").await;
    let alice = client_with(&h, &pem, &key);
    let (_, csr) = en::p256_key_and_csr();
    let r = renew(&alice, &h, &csr).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "renewal_not_due", "{}", r.text());
    assert!(r.text().contains("can be renewed from"), "{}", r.text());
    // The page says when; no form, and the application is not told to renew.
    let page = en::get(&alice, &h.url("/.certgate/certificate")).await;
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("id=\"renew-later\""),
        "{}",
        page.text()
    );
    assert!(!page.text().contains("id=\"renew\""));
    let r = en::get(&alice, &h.url("/app")).await;
    assert!(!Echo::parse(&r.body).has("x-client-cert-renew"));

    // No certificate: the no-certificate answer.
    let anon = en::anonymous(&h);
    let r = renew(&anon, &h, &csr).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "no_cert");
    let r = en::get(&anon, &h.url("/.certgate/certificate")).await;
    assert_eq!(r.status, 403);

    // A certificate of another trusted CA is not certgate's to renew; its page names that
    // CA and says to ask the administrator.
    let bob = h.pki.client("bob");
    let page = support::get(&h.client(Some(&bob)), &h.url("/.certgate/certificate"), &[]).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.text().contains("CN=certgate test client CA"),
        "{}",
        page.text()
    );
    assert!(
        page.text()
            .contains("Ask your administrator for a new certificate")
    );
    let r = renew(&h.client(Some(&bob)), &h, &csr).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "not_renewable", "{}", r.text());
    h.shutdown().await;

    // Due, but revoked or reset: the gate's answer, nothing issued.
    let h = gateway("  renew_before: 400d\n").await;
    let (pem, key) = enrolled(&h, "carol").await;
    let carol = client_with(&h, &pem, &key);
    let r = renew(&carol, &h, "not a csr").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "bad_csr");
    // Unused renewals pile up to a bound: then the administrator decides.
    for i in 1..10 {
        let r = renew(&carol, &h, &csr).await;
        assert_eq!(r.status, 200, "renewal {i}: {}", r.text());
    }
    let r = renew(&carol, &h, &csr).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_certificates", "{}", r.text());
    assert!(r.text().contains("10 working certificates"), "{}", r.text());
    h.admin().reset("carol").await;
    let carol = client_with(&h, &pem, &key);
    let r = renew(&carol, &h, &csr).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "reset", "{}", r.text());
    let r = h.admin().get("/v1/accounts/carol").await;
    assert_eq!(
        r.json()["certificates"].as_array().map(Vec::len),
        Some(10),
        "nothing issued after the reset: {}",
        r.text()
    );
    // GET is not the way to renew.
    let r = en::get(&carol, &h.url("/.certgate/renew")).await;
    assert_eq!(r.status, 405);
    h.shutdown().await;

    // renew_before: 0s turns self-renewal off.
    let h = gateway("  renew_before: 0s\n").await;
    let (pem, key) = enrolled(&h, "dave").await;
    let dave = client_with(&h, &pem, &key);
    let r = renew(&dave, &h, &csr).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "renewal_off");
    h.shutdown().await;
}

/// An expired certificate of the enrollment CA gets the "expired" page (HTML for a
/// browser, JSON otherwise), not a TLS alert: accepted in the handshake for that only,
/// never forwarded, not renewable. An expired one of another trusted CA still fails the
/// handshake (tests/data_plane.rs).
#[tokio::test]
async fn expired_enrollment_certificate_gets_the_expired_page() {
    let h = gateway("  renew_before: 400d\n").await;
    en::enable(&h, "gina").await;
    let generation = h.admin().generation("gina").await;
    let old = h.pki.enrolled_expired("gina", generation);
    let client = h.client_h1(Some(&old));
    let page = support::get(&client, &h.url("/app/expired"), &[("accept", "text/html")]).await;
    assert_eq!(page.status, 403, "{}", page.text());
    let html = page.text();
    assert!(html.contains("Certificate expired"), "{html}");
    assert!(html.contains("reset your certificate"), "{html}");
    assert!(html.contains("cannot be renewed"), "{html}");
    let r = support::get(&client, &h.url("/app/expired"), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "expired");
    assert!(h.upstream.seen_with_prefix("/app/expired").is_empty());
    // Not renewable, and its certificate page is the same refusal.
    let (_, csr) = en::p256_key_and_csr();
    let r = renew(&client, &h, &csr).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "expired");
    let r = support::get(&client, &h.url("/.certgate/certificate"), &[]).await;
    assert_eq!(r.json()["error"], "expired", "{}", r.text());
    // Over HTTP/2 too.
    let r = support::get(&h.client(Some(&old)), &h.url("/app/expired"), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "expired");

    // Only certificates the enrollment CA really signed: an expired one from a CA that
    // merely has its name still fails the handshake, as does a not-yet-valid one of ours.
    let impostor = support::pki::Ca::new("certgate test enrollment CA");
    let forged = impostor.issue(
        &support::LeafSpec::account("gina")
            .generation(generation)
            .expired(),
    );
    h.raw(Some(&forged))
        .expect_refused("expired certificate of a same-name CA")
        .await;
    let early = h.pki.enroll_ca.issue(
        &support::LeafSpec::account("gina")
            .generation(generation)
            .not_before(support::pki::now() + ::time::Duration::hours(1)),
    );
    h.raw(Some(&early))
        .expect_refused("not yet valid certificate of the enrollment CA")
        .await;
    h.shutdown().await;
}
