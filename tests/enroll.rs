//! Self-service enrollment end to end (DESIGN.md "Enrollment and the CA"): tickets from the
//! admin API, the initialization page, PKCS#12 and CSR enrollment, the CRL, and every bad
//! input refused with a clear 4xx that changes nothing. Issued certificates are judged by
//! `openssl verify`, bundles by `openssl pkcs12` and NSS `pk12util`.

mod support;

use std::time::Duration;

use base64::Engine as _;
use support::enroll::{
    self as en, KeyKind, client_with, first_pem, get, metric, openssl_csr, pem_to_der, run, run_ok,
    tools,
};
use support::{Harness, Options, Prepared, Resp, within};
use x509_parser::prelude::*;

const PASS: &str = "correct horse battery";

fn assert_refused(r: &Resp, status: u16, token: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    let v = r.json();
    assert_eq!(v["error"], token, "{what}: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| m.len() > 10),
        "{what}: no message in {v}"
    );
    assert_enrollment_headers(r, what);
}

fn assert_enrollment_headers(r: &Resp, what: &str) {
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("no-store"),
        "{what}"
    );
    assert_eq!(
        r.header("referrer-policy").as_deref(),
        Some("no-referrer"),
        "{what}"
    );
}

/// The page's one script: same-origin, with a Subresource Integrity digest that matches
/// what the gateway serves, as JavaScript, never cached, never sniffed.
async fn assert_page_script(h: &Harness, html: &str) {
    let tag = html
        .split("<script ")
        .nth(1)
        .and_then(|t| t.split('>').next())
        .expect("script tag");
    let attr = |name: &str| {
        tag.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|v| v.split('"').next())
            .unwrap_or_else(|| panic!("no {name} in <script {tag}>"))
            .to_string()
    };
    let src = attr("src");
    assert_eq!(src, "/.certgate/assets/enroll.js");
    let integrity = attr("integrity");
    let r = en::get(&en::anonymous(h), &h.url(&src)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_enrollment_headers(&r, "page script");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, &r.body);
    let expected = format!(
        "sha384-{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    );
    assert_eq!(integrity, expected, "the integrity digest is the script's");
    assert!(
        r.text().contains("pkijs@"),
        "the bundle names what it was built from"
    );
    let post = en::anonymous(h).post(h.url(&src)).send().await.unwrap();
    assert_eq!(post.status(), 405);
}

/// What the account looks like through the admin API: its certificates' serials.
async fn serials_of(h: &Harness, account: &str) -> Vec<String> {
    let r = h.admin().get(&format!("/v1/accounts/{account}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .map(|c| c["serial"].as_str().expect("serial").to_string())
        .collect()
}

/// Checks what certgate puts into every issued certificate, and returns its serial.
fn assert_issued(der: &[u8], account: &str, generation: u64, h: &Harness) -> String {
    let (_, cert) = X509Certificate::from_der(der).expect("issued certificate parses");
    let serial = cert.raw_serial();
    let serial = if serial.len() == 17 && serial[0] == 0 {
        &serial[1..]
    } else {
        serial
    };
    assert!(
        serial.len() == 16 || (serial.len() < 16 && serial.len() >= 14),
        "128-bit serial, got {} bytes",
        serial.len()
    );
    let cn: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .filter_map(|c| c.as_str().ok())
        .collect();
    assert_eq!(cn, vec![account], "CN is the account, never the CSR's");
    assert!(
        !cert.subject().to_string().contains("Evil"),
        "the CSR's subject leaked: {}",
        cert.subject()
    );
    let eku = cert
        .extended_key_usage()
        .expect("EKU")
        .expect("EKU present");
    assert!(eku.value.client_auth, "clientAuth EKU");
    assert!(!eku.value.server_auth);
    let san = cert
        .subject_alternative_name()
        .expect("SAN")
        .expect("SAN present");
    let uris: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        uris,
        vec![
            format!("urn:certgate:account:{account}"),
            format!("urn:certgate:generation:{generation}")
        ]
    );
    let has_aki = cert.extensions().iter().any(|e| {
        matches!(
            e.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(_)
        )
    });
    assert!(has_aki, "authority key identifier");
    assert!(!cert.is_ca());
    let (_, ca) = X509Certificate::from_der(h.pki.enroll_ca.der.as_ref()).unwrap();
    assert_eq!(cert.issuer(), ca.subject());
    // validity = enrollment.validity (default 365d), from a few minutes back.
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(
        (365 * 86400..=365 * 86400 + 600).contains(&life),
        "validity {life} s"
    );
    serial
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// `openssl verify` the leaf against the enrollment CA for TLS client use.
fn openssl_verify(dir: &std::path::Path, h: &Harness, leaf_pem: &str) {
    let ca = dir.join("enroll-ca.pem");
    std::fs::write(&ca, &h.pki.enroll_ca.cert_pem).unwrap();
    let leaf = dir.join("leaf.pem");
    std::fs::write(&leaf, leaf_pem).unwrap();
    let out = run_ok(
        "openssl",
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            &ca.display().to_string(),
            &leaf.display().to_string(),
        ],
        None,
    );
    assert!(out.contains(": OK"), "openssl verify: {out}");
}

/// The PKCS#12 path: page, form post, bundle read by openssl and imported by NSS, the
/// certificate recorded and working, the metrics and headers right.
#[tokio::test]
async fn pkcs12_enrollment_end_to_end() {
    let have_openssl = tools(&["openssl"], "apt-get install openssl");
    let have_nss = tools(&["pk12util", "certutil"], "apt-get install libnss3-tools");
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ticket = en::enable(&h, "alice").await;

    // The page: HTML, names the account, loads only its own script, leaks no referrer.
    let r = en::page(&h, &ticket).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_enrollment_headers(&r, "page");
    let html = r.text();
    assert!(
        r.header("content-type").unwrap().starts_with("text/html"),
        "{:?}",
        r.header("content-type")
    );
    assert!(html.contains("Client Certificate Initialization"));
    assert!(html.contains("<b id=\"account\">alice</b>"), "{html}");
    assert!(html.contains("Generate Certificate"));
    assert!(html.contains("name=\"passphrase\""));
    assert!(html.contains("action=\"/.certgate/enroll/pkcs12\""));
    assert!(html.contains("ask your administrator to reset"));
    assert!(
        html.contains("Without JavaScript, the gateway makes your private key"),
        "the server-side path is labelled: {html}"
    );
    for external in ["<link", "url(", "@import", "src=\"http", "src=\"//"] {
        assert!(!html.contains(external), "page has {external}");
    }
    assert_eq!(html.matches("<script").count(), 1, "one script: {html}");
    assert_eq!(
        html.matches("src=").count(),
        1,
        "one external resource: {html}"
    );
    let csp = r.header("content-security-policy").expect("CSP");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(csp.contains("form-action 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-eval"), "{csp}");
    assert_page_script(&h, &html).await;
    // Looking at the page does not use the ticket: the form still works afterwards.
    let again = en::page(&h, &ticket).await;
    assert_eq!(again.status, 200);

    let r = en::pkcs12(&h, &ticket, PASS).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_enrollment_headers(&r, "pkcs12");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-pkcs12")
    );
    assert_eq!(
        r.header("content-disposition").as_deref(),
        Some("attachment; filename=\"alice.p12\"")
    );
    let p12 = dir.path().join("alice.p12");
    std::fs::write(&p12, &r.body).unwrap();

    // The ticket is spent.
    let r2 = en::pkcs12(&h, &ticket, PASS).await;
    assert_refused(&r2, 403, "invalid_ticket", "reused ticket");
    let r3 = en::page(&h, &ticket).await;
    assert_eq!(r3.status, 403);
    assert!(
        r3.text().contains("Enrollment link not valid"),
        "{}",
        r3.text()
    );

    // Recorded in the registry.
    let serials = serials_of(&h, "alice").await;
    assert_eq!(serials.len(), 1, "{serials:?}");
    assert_eq!(
        metric(&h, "certgate_enrollments_total{result=\"success\"}").await,
        1.0
    );

    if have_openssl {
        let pass_arg = format!("pass:{PASS}");
        let p12s = p12.display().to_string();
        // Structure: PBES2/PBKDF2-SHA256/AES-256, SHA-256 MAC with an 8-byte salt.
        let info = run_ok(
            "openssl",
            &[
                "pkcs12", "-info", "-noout", "-in", &p12s, "-passin", &pass_arg,
            ],
            None,
        );
        assert!(info.contains("MAC: sha256"), "{info}");
        assert!(info.contains("MAC length: 32, salt length: 8"), "{info}");
        assert!(
            info.contains("PBES2, PBKDF2, AES-256-CBC, Iteration 100000, PRF hmacWithSHA256"),
            "{info}"
        );
        assert!(!info.contains("RC2") && !info.contains("3DES"), "{info}");
        // Key, leaf and CA; the friendly name names the account.
        let dump = run_ok(
            "openssl",
            &["pkcs12", "-in", &p12s, "-passin", &pass_arg, "-nodes"],
            None,
        );
        assert!(dump.contains("friendlyName: alice (certgate)"), "{dump}");
        assert!(dump.contains("-----BEGIN PRIVATE KEY-----"), "{dump}");
        assert_eq!(dump.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        let wrong = run(
            "openssl",
            &[
                "pkcs12",
                "-info",
                "-noout",
                "-in",
                &p12s,
                "-passin",
                "pass:wrong pass",
            ],
            None,
        );
        assert!(
            !wrong.status.success(),
            "a wrong passphrase must not open it"
        );

        let leaf_pem = run_ok(
            "openssl",
            &[
                "pkcs12", "-in", &p12s, "-passin", &pass_arg, "-clcerts", "-nokeys",
            ],
            None,
        );
        let leaf_pem = first_pem(&leaf_pem[leaf_pem.find("-----BEGIN").unwrap()..]);
        let key_out = run_ok(
            "openssl",
            &[
                "pkcs12", "-in", &p12s, "-passin", &pass_arg, "-nocerts", "-nodes",
            ],
            None,
        );
        let key_pem = key_out[key_out.find("-----BEGIN PRIVATE KEY-----").unwrap()..].to_string();
        let serial = assert_issued(&pem_to_der(&leaf_pem), "alice", 1, &h);
        assert_eq!(serials, vec![serial]);
        // ECDSA P-256 key by default (NSS cannot import Ed25519 bundles).
        let key_text = run_ok(
            "openssl",
            &["pkey", "-noout", "-text"],
            Some(key_pem.as_bytes()),
        );
        assert!(key_text.contains("prime256v1"), "{key_text}");
        openssl_verify(dir.path(), &h, &leaf_pem);

        // The certificate works through the gateway (the enrollment CA is trusted).
        let alice = client_with(&h, &leaf_pem, &key_pem);
        let r = get(&alice, &h.url("/hello")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            support::Echo::parse(&r.body).one("x-client-account"),
            "alice"
        );
    }

    if have_nss {
        let db = dir.path().join("nssdb");
        std::fs::create_dir_all(&db).unwrap();
        let dbarg = format!("sql:{}", db.display());
        run_ok("certutil", &["-N", "-d", &dbarg, "--empty-password"], None);
        let out = run_ok(
            "pk12util",
            &[
                "-i",
                &p12.display().to_string(),
                "-d",
                &dbarg,
                "-W",
                PASS,
                "-K",
                "",
            ],
            None,
        );
        assert!(out.contains("PKCS12 IMPORT SUCCESSFUL"), "{out}");
        let keys = run_ok("certutil", &["-K", "-d", &dbarg], None);
        assert!(keys.contains("ec"), "{keys}");
        let certs = run_ok("certutil", &["-L", "-d", &dbarg], None);
        assert!(certs.contains("alice"), "{certs}");
    }
    h.shutdown().await;
}

/// The CSR path for every accepted key type: only the public key is used, the chain
/// verifies, the certificate works; and after a reset the old one is refused and a new
/// enrollment works.
#[tokio::test]
async fn csr_enrollment_for_each_key_type_and_reset() {
    if !tools(&["openssl"], "apt-get install openssl") {
        return;
    }
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut ticket = en::enable(&h, "bob").await;
    let mut issued = Vec::new();
    for (i, kind) in [
        KeyKind::P256,
        KeyKind::P384,
        KeyKind::Ed25519,
        KeyKind::Rsa(2048),
    ]
    .into_iter()
    .enumerate()
    {
        let (key_pem, csr_pem) = openssl_csr(dir.path(), kind, &format!("bob{i}"));
        if i > 0 {
            ticket = en::new_ticket(&h, "bob").await;
        }
        // PEM for most, DER for one.
        let body = if kind == KeyKind::P384 {
            let der = run(
                "openssl",
                &["req", "-outform", "DER"],
                Some(csr_pem.as_bytes()),
            );
            assert!(der.status.success());
            der.stdout
        } else {
            csr_pem.clone().into_bytes()
        };
        let r = en::csr(&h, Some(&ticket), body).await;
        assert_eq!(r.status, 200, "{kind:?}: {}", r.text());
        assert_enrollment_headers(&r, "csr");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/pem-certificate-chain")
        );
        let chain = r.text();
        assert_eq!(chain.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        assert!(
            chain.ends_with(&h.pki.enroll_ca.cert_pem)
                || chain.contains(h.pki.enroll_ca.cert_pem.trim())
        );
        let leaf = first_pem(&chain);
        let serial = assert_issued(&pem_to_der(&leaf), "bob", 1, &h);
        openssl_verify(dir.path(), &h, &leaf);
        // The certificate holds the CSR's key.
        let pub_csr = run_ok(
            "openssl",
            &["req", "-noout", "-pubkey"],
            Some(csr_pem.as_bytes()),
        );
        let pub_cert = run_ok(
            "openssl",
            &["x509", "-noout", "-pubkey"],
            Some(leaf.as_bytes()),
        );
        assert_eq!(pub_csr, pub_cert, "{kind:?}");
        let client = client_with(&h, &leaf, &key_pem);
        let r = get(&client, &h.url("/hello")).await;
        assert_eq!(r.status, 200, "{kind:?}: {}", r.text());
        issued.push((serial, leaf, key_pem));
    }
    let mut on_record = serials_of(&h, "bob").await;
    on_record.sort();
    let mut expected: Vec<String> = issued.iter().map(|(s, _, _)| s.clone()).collect();
    expected.sort();
    assert_eq!(on_record, expected);

    // Reset: the old certificates are refused at once; the reset's ticket enrolls anew.
    let v = h.admin().reset("bob").await;
    let reset_ticket = v["ticket"].as_str().expect("reset ticket").to_string();
    let (_, old_leaf, old_key) = &issued[0];
    let r = get(&client_with(&h, old_leaf, old_key), &h.url("/hello")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "reset");
    // A ticket of the old generation was voided by the reset.
    let r = en::csr(
        &h,
        Some(&ticket),
        openssl_csr(dir.path(), KeyKind::P256, "late").1,
    )
    .await;
    assert_refused(&r, 403, "invalid_ticket", "pre-reset ticket");
    let (key_pem, csr_pem) = openssl_csr(dir.path(), KeyKind::P256, "bob-new");
    let r = en::csr(&h, Some(&reset_ticket), csr_pem).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let leaf = first_pem(&r.text());
    assert_issued(&pem_to_der(&leaf), "bob", 2, &h);
    let r = get(&client_with(&h, &leaf, &key_pem), &h.url("/hello")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    h.shutdown().await;
}

/// Every bad input gets a clear 4xx and changes nothing: afterwards the same ticket still
/// enrolls exactly one certificate.
#[tokio::test]
async fn bad_inputs_are_refused_and_change_nothing() {
    if !tools(&["openssl"], "apt-get install openssl") {
        return;
    }
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ticket = en::enable(&h, "carol").await;

    // Short passphrase (7 characters; multi-byte characters count as one each).
    let r = en::pkcs12(&h, &ticket, "1234567").await;
    assert_refused(&r, 400, "passphrase_too_short", "7-character passphrase");
    let r = en::pkcs12(&h, &ticket, "ééééééé").await;
    assert_refused(&r, 400, "passphrase_too_short", "7 two-byte characters");
    let r = en::pkcs12(&h, &ticket, "").await;
    assert_refused(&r, 400, "passphrase_too_short", "no passphrase");

    // Not a form.
    let r = within(
        "json post",
        en::anonymous(&h)
            .post(h.url("/.certgate/enroll/pkcs12"))
            .header("content-type", "application/json")
            .body(format!(
                "{{\"ticket\":\"{ticket}\",\"passphrase\":\"{PASS}\"}}"
            ))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 415);

    // A browser gets the refusal as a page.
    let r = within(
        "browser post",
        en::anonymous(&h)
            .post(h.url("/.certgate/enroll/pkcs12"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "text/html")
            .body(format!("ticket={ticket}&passphrase=short"))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("at least 8 characters"), "{body}");
    assert!(body.contains("still valid"), "{body}");

    // CSRs: garbage, wrong PEM label, bad signature, RSA-1024, an unsupported curve.
    let (_, good) = openssl_csr(dir.path(), KeyKind::P256, "good");
    let good_der = run(
        "openssl",
        &["req", "-outform", "DER"],
        Some(good.as_bytes()),
    )
    .stdout;
    let mut bad_sig = good_der.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    let (_, rsa1024) = openssl_csr(dir.path(), KeyKind::Rsa(1024), "weak");
    let (_, k1) = openssl_csr(dir.path(), KeyKind::Secp256k1, "k1");
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        (
            "garbage",
            b"hello world".to_vec(),
            400,
            "bad_csr",
            "not a PKCS#10",
        ),
        ("empty", Vec::new(), 400, "bad_csr", "not a PKCS#10"),
        (
            "random DER",
            vec![0x30, 0x82, 0xff, 0xff, 1, 2, 3],
            400,
            "bad_csr",
            "not a PKCS#10",
        ),
        (
            "certificate instead of CSR",
            h.pki.enroll_ca.cert_pem.clone().into_bytes(),
            400,
            "bad_csr",
            "CERTIFICATE REQUEST",
        ),
        (
            "bad signature",
            bad_sig,
            400,
            "bad_csr_signature",
            "signature",
        ),
        (
            "RSA-1024",
            rsa1024.into_bytes(),
            400,
            "unsupported_key",
            "1024 bits is too weak",
        ),
        (
            "secp256k1",
            k1.into_bytes(),
            400,
            "unsupported_key",
            "1.3.132.0.10",
        ),
    ];
    for (what, body, status, token, says) in cases {
        let r = en::csr(&h, Some(&ticket), body).await;
        assert_refused(&r, status, token, what);
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert!(msg.contains(says), "{what}: {msg}");
    }
    // No ticket at all: 401 with a challenge.
    let r = en::csr(&h, None, good.clone()).await;
    assert_refused(&r, 401, "missing_ticket", "no bearer");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));

    // Oversized bodies: 413, declared or streamed.
    let big = vec![b'A'; 64 * 1024 + 1];
    let r = en::csr(&h, Some(&ticket), big.clone()).await;
    assert_refused(&r, 413, "payload_too_large", "declared oversized CSR");
    let status = chunked_post(&h, "/.certgate/enroll/csr", &ticket, &big).await;
    assert_eq!(status, 413, "streamed (chunked) oversized CSR");
    let r = within(
        "oversized form",
        en::anonymous(&h)
            .post(h.url("/.certgate/enroll/pkcs12"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(big)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    // Wrong methods and unknown endpoints.
    let r = get(&en::anonymous(&h), &h.url("/.certgate/enroll/pkcs12")).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("POST"));
    let r = get(&en::anonymous(&h), &h.url("/.certgate/nothing")).await;
    assert_eq!(r.status, 404);

    // Nothing happened: no certificate, and the ticket still works, once.
    assert!(serials_of(&h, "carol").await.is_empty());
    assert_eq!(
        metric(&h, "certgate_enrollments_total{result=\"success\"}").await,
        0.0
    );
    assert!(metric(&h, "certgate_enrollments_total{result=\"failure\"}").await >= 10.0);
    let r = en::csr(&h, Some(&ticket), good).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(serials_of(&h, "carol").await.len(), 1);
    h.shutdown().await;
}

/// POSTs `data` in 8 KiB chunks without a Content-Length; returns the status.
async fn chunked_post(h: &Harness, path: &str, ticket: &str, data: &[u8]) -> u16 {
    let mut conn = h.raw(None).connect().await.expect("TLS connection");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {ticket}\r\n\
         transfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for c in data.chunks(8192) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    // The gateway may answer and close before reading it all: a write error is fine.
    let _ = conn.write_all(&req).await;
    let head = conn.read_head(support::STEP).await;
    let text = String::from_utf8_lossy(&head.bytes).into_owned();
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"))
}

/// Unknown, expired and wrong-generation tickets: 403 with a page that says what to do.
#[tokio::test]
async fn unknown_expired_and_stale_tickets_are_refused() {
    let h = Harness::start().await;
    let store = h.cache().store().clone();
    let good = en::enable(&h, "dave").await;
    let now = certgate::core::clock::now();

    let unknown = certgate::core::ticket::generate();
    let expired = certgate::core::ticket::generate();
    store
        .put_ticket(certgate::state::TicketRecord {
            hash: certgate::core::ticket::hash(&expired),
            account: "dave".into(),
            generation: 1,
            expires_at: now - 1,
        })
        .await
        .unwrap();
    // A ticket of generation 1 that survived a reset (as a racing issue would leave it).
    h.admin().reset("dave").await;
    let stale = certgate::core::ticket::generate();
    store
        .put_ticket(certgate::state::TicketRecord {
            hash: certgate::core::ticket::hash(&stale),
            account: "dave".into(),
            generation: 1,
            expires_at: now + 3600,
        })
        .await
        .unwrap();

    let r = get(&en::anonymous(&h), &h.url("/.certgate/enroll")).await;
    assert_eq!(r.status, 400, "no ticket: {}", r.text());
    assert!(r.text().contains("missing_ticket"), "{}", r.text());

    // 5 cases × 2 requests: exactly the 10 failures allowed per minute.
    for (what, t, token) in [
        ("unknown", unknown.as_str(), "invalid_ticket"),
        ("expired", expired.as_str(), "invalid_ticket"),
        ("voided by reset", good.as_str(), "invalid_ticket"),
        ("malformed", "not a ticket!", "invalid_ticket"),
        ("wrong generation", stale.as_str(), "stale_ticket"),
    ] {
        let r = en::pkcs12(&h, t, PASS).await;
        assert_refused(&r, 403, token, what);
        let r = en::page(&h, &en::form_escape(t)).await;
        assert_eq!(r.status, 403, "page, {what}: {}", r.text());
        assert!(r.text().contains("administrator"), "{what}: {}", r.text());
        assert_enrollment_headers(&r, what);
    }
    assert!(serials_of(&h, "dave").await.is_empty());
    h.shutdown().await;
}

/// Of many racing uses of one ticket, exactly one gets a certificate.
#[tokio::test]
async fn racing_uses_of_one_ticket_issue_exactly_one_certificate() {
    let h = Harness::start().await;
    let ticket = en::enable(&h, "erin").await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (csr, ticket, client, url) = (
            csr.clone(),
            ticket.clone(),
            en::anonymous(&h),
            h.url(if i % 2 == 0 {
                "/.certgate/enroll/csr"
            } else {
                "/.certgate/enroll/pkcs12"
            }),
        );
        tasks.push(tokio::spawn(async move {
            let req = if i % 2 == 0 {
                client.post(url).bearer_auth(&ticket).body(csr)
            } else {
                client
                    .post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!(
                        "ticket={ticket}&passphrase={}",
                        en::form_escape(PASS)
                    ))
            };
            req.send().await.map(|r| r.status().as_u16())
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(within("racing enrollment", t).await.unwrap().unwrap());
    }
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 403),
        "{statuses:?}"
    );
    assert_eq!(serials_of(&h, "erin").await.len(), 1);
    h.shutdown().await;
}

/// Ten failed ticket attempts per address per minute; further failures get 429, but a
/// valid ticket from the same address (another user behind the same NAT) still works.
#[tokio::test]
async fn failed_ticket_attempts_are_rate_limited_without_blocking_a_valid_ticket() {
    let h = Harness::start().await;
    let good = en::enable(&h, "frank").await;
    for i in 0..10 {
        let r = en::pkcs12(&h, &certgate::core::ticket::generate(), PASS).await;
        assert_eq!(r.status, 403, "attempt {i}: {}", r.text());
    }
    let r = en::pkcs12(&h, &certgate::core::ticket::generate(), PASS).await;
    assert_refused(&r, 429, "too_many_attempts", "11th failed attempt");
    assert_eq!(r.header("retry-after").as_deref(), Some("60"));

    // The valid ticket, from the same address, past the limit.
    let r = en::page(&h, &good).await;
    assert_eq!(r.status, 200, "the page of a valid ticket: {}", r.text());
    let r = en::pkcs12(&h, &good, PASS).await;
    assert_eq!(
        r.status,
        200,
        "a valid ticket is never blocked: {}",
        r.text()
    );
    assert_eq!(serials_of(&h, "frank").await.len(), 1);

    // The spent ticket is now a failure; presented again and again it is answered
    // without a store lookup once it has failed ten times.
    for _ in 0..12 {
        let r = en::pkcs12(&h, &good, PASS).await;
        assert!(matches!(r.status, 403 | 429), "{}", r.text());
    }
    let r = en::page(&h, &good).await;
    assert_eq!(
        r.status,
        429,
        "a spent ticket presented again: {}",
        r.text()
    );
    assert!(r.text().contains("too_many_attempts"), "{}", r.text());
    h.shutdown().await;
}

/// The CRL: DER, signed by the enrollment CA, lists revoked certgate-issued serials only,
/// its number grows on every change and persists across a restart.
#[tokio::test]
async fn crl_lists_revoked_enrolled_certificates() {
    if !tools(&["openssl"], "apt-get install openssl") {
        return;
    }
    let mut h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &h.pki.enroll_ca.cert_pem).unwrap();
    let cas = ca.display().to_string();

    let fetch = |h: &Harness| {
        let client = en::anonymous(h);
        let url = h.url("/.certgate/crl");
        async move { get(&client, &url).await }
    };
    let crl_text = |der: &[u8]| -> String {
        let path = dir.path().join("crl.der");
        std::fs::write(&path, der).unwrap();
        run_ok(
            "openssl",
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                &path.display().to_string(),
                "-CAfile",
                &cas,
                "-noout",
                "-text",
            ],
            None,
        )
    };
    let number = |text: &str| -> u64 {
        let i = text.find("X509v3 CRL Number:").expect("CRL number") + "X509v3 CRL Number:".len();
        text[i..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };

    let r = fetch(&h).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/pkix-crl")
    );
    let t0 = crl_text(&r.body);
    assert!(t0.contains("verify OK"), "{t0}");
    assert!(t0.contains("No Revoked Certificates"), "{t0}");
    assert!(t0.contains("Next Update:"), "{t0}");
    assert!(t0.contains("Authority Key Identifier"), "{t0}");
    let n0 = number(&t0);

    // Unchanged: the same CRL.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = fetch(&h).await;
    assert_eq!(again.body, r.body, "an unchanged CRL is not re-signed");

    // Enroll, revoke; a foreign serial revoked too is not listed.
    let ticket = en::enable(&h, "gina").await;
    let (key_pem, csr_pem) = openssl_csr(dir.path(), KeyKind::P256, "gina");
    let r = en::csr(&h, Some(&ticket), csr_pem).await;
    assert_eq!(r.status, 200);
    let leaf = first_pem(&r.text());
    let serial = assert_issued(&pem_to_der(&leaf), "gina", 1, &h);
    h.admin().revoke(&serial).await;
    h.admin().revoke("0badc0ffee").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = fetch(&h).await;
    let t1 = crl_text(&r.body);
    assert!(t1.contains("verify OK"), "{t1}");
    assert!(t1.to_lowercase().contains(&serial), "{t1}");
    assert!(!t1.to_lowercase().contains("0badc0ffee"), "{t1}");
    assert!(t1.contains("Key Compromise"), "{t1}");
    let n1 = number(&t1);
    assert!(n1 > n0, "CRL number grows: {n0} → {n1}");

    // openssl agrees the certificate is revoked.
    let crl_pem = dir.path().join("crl.pem");
    run_ok(
        "openssl",
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            &dir.path().join("crl.der").display().to_string(),
            "-out",
            &crl_pem.display().to_string(),
        ],
        None,
    );
    let leaf_path = dir.path().join("gina.pem");
    std::fs::write(&leaf_path, &leaf).unwrap();
    let v = run(
        "openssl",
        &[
            "verify",
            "-crl_check",
            "-CRLfile",
            &crl_pem.display().to_string(),
            "-CAfile",
            &cas,
            &leaf_path.display().to_string(),
        ],
        None,
    );
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(out.contains("certificate revoked"), "{out}");
    // And the gateway refuses it.
    let r = get(&client_with(&h, &leaf, &key_pem), &h.url("/hello")).await;
    assert_eq!(r.status, 403);

    // The number lives in the store: after a restart it keeps growing.
    h.restart().await;
    let r = fetch(&h).await;
    let t2 = crl_text(&r.body);
    assert!(number(&t2) > n1, "after restart: {} vs {n1}", number(&t2));
    assert!(t2.to_lowercase().contains(&serial));
    h.shutdown().await;
}

/// `GET /.certgate/ca.pem` is the enrollment CA.
#[tokio::test]
async fn ca_pem_is_the_enrollment_ca() {
    let h = Harness::start().await;
    let r = get(&en::anonymous(&h), &h.url("/.certgate/ca.pem")).await;
    assert_eq!(r.status, 200);
    assert_eq!(pem_to_der(&r.text()), h.pki.enroll_ca.der.as_ref());
    h.shutdown().await;
}

/// With enrollment off, the endpoints do not exist.
#[tokio::test]
async fn enrollment_off_means_not_found() {
    let h = Harness::with(Options {
        enrollment: false,
        ..Options::default()
    })
    .await;
    for path in [
        "/.certgate/enroll?ticket=x",
        "/.certgate/crl",
        "/.certgate/ca.pem",
    ] {
        let r = get(&en::anonymous(&h), &h.url(path)).await;
        assert_eq!(r.status, 404, "{path}");
    }
    h.shutdown().await;
}

/// A CA key file that other users can read is refused with a message that says how to fix
/// it.
#[tokio::test]
async fn world_readable_ca_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let p = Prepared::new(Options::default()).await;
    let key = p.dir.path().join("pki/enroll-ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Refused when the configuration is loaded (so `check-config` catches it too).
    let err = match certgate::config::Config::load(&p.config_path) {
        Ok(_) => panic!("a world-readable CA key was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("enrollment.ca_key"), "{err}");
    // Group-readable (a Kubernetes secret with an fsGroup) is fine.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let gw = within("app::start", certgate::app::start(p.load_config()))
        .await
        .expect("0640 key accepted");
    gw.shutdown().await;
}

/// A browser form posted from another site is refused before the ticket is looked at
/// (the ticket is the only secret); the gateway's own page (same origin) and clients that
/// send no Origin (curl, scripts) are not.
#[tokio::test]
async fn enrollment_posts_from_another_site_are_refused() {
    let h = Harness::with(Options::default()).await;
    let ticket = en::enable(&h, "alice").await;
    let own_origin = h.url("").trim_end_matches('/').to_string();
    let post = |headers: Vec<(&'static str, String)>| {
        let mut b = en::anonymous(&h)
            .post(h.url("/.certgate/enroll/pkcs12"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("ticket={ticket}&passphrase=short"));
        for (k, v) in headers {
            b = b.header(k, v);
        }
        b.send()
    };
    for (what, headers) in [
        (
            "foreign Origin",
            vec![("origin", "https://evil.example".to_string())],
        ),
        (
            "Sec-Fetch-Site: cross-site",
            vec![("sec-fetch-site", "cross-site".to_string())],
        ),
        (
            "Sec-Fetch-Site: same-site",
            vec![("sec-fetch-site", "same-site".to_string())],
        ),
        (
            "Origin null from another site",
            vec![
                ("origin", "null".to_string()),
                ("sec-fetch-site", "cross-site".to_string()),
            ],
        ),
        (
            "same-origin claimed by Origin, cross-site by Sec-Fetch-Site",
            vec![
                ("origin", own_origin.clone()),
                ("sec-fetch-site", "cross-site".to_string()),
            ],
        ),
    ] {
        let r = Resp::from_reqwest(within(what, post(headers)).await.unwrap()).await;
        assert_refused(&r, 403, "cross_site_request", what);
    }
    // The page's own origin, and no Origin at all, reach the form check (the short
    // passphrase), so the ticket stays usable.
    for (what, headers) in [
        (
            "same origin",
            vec![
                ("origin", own_origin.clone()),
                ("sec-fetch-site", "same-origin".to_string()),
            ],
        ),
        ("no Origin", vec![]),
        (
            // What a browser sends for the page's own form (the page is no-referrer).
            "Origin null, same-origin",
            vec![
                ("origin", "null".to_string()),
                ("sec-fetch-site", "same-origin".to_string()),
            ],
        ),
    ] {
        let r = Resp::from_reqwest(within(what, post(headers)).await.unwrap()).await;
        assert_refused(&r, 400, "passphrase_too_short", what);
    }
    let r = en::pkcs12(&h, &ticket, PASS).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// `enrollment.server_side_keys: false`: the page says it needs JavaScript, the
/// server-side PKCS#12 path is refused with a page that says what to do (the ticket stays
/// valid), and a CSR still works.
#[tokio::test]
async fn server_side_keys_can_be_turned_off() {
    let p = Prepared::new(Options::default()).await;
    let yaml = std::fs::read_to_string(&p.config_path).unwrap().replace(
        "enrollment:\n  enabled: true\n",
        "enrollment:\n  enabled: true\n  server_side_keys: false\n",
    );
    assert!(yaml.contains("server_side_keys: false"), "{yaml}");
    std::fs::write(&p.config_path, yaml).unwrap();
    let h = p.start().await;
    let ticket = en::enable(&h, "alice").await;

    let page = en::page(&h, &ticket).await;
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("<noscript>"), "{html}");
    assert!(html.contains("This page needs JavaScript"), "{html}");
    assert!(!html.contains("Without JavaScript, the gateway makes your private key"));
    assert_page_script(&h, &html).await;

    let r = en::pkcs12(&h, &ticket, PASS).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "server_side_keys_off", "{}", r.text());
    assert!(
        r.text().contains("Your link is still valid"),
        "{}",
        r.text()
    );

    // The ticket was not spent: a CSR made elsewhere (here: by the test) is certified.
    let (_, csr) = en::p256_key_and_csr();
    let r = en::csr(&h, Some(&ticket), csr.into_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("BEGIN CERTIFICATE"));
    h.shutdown().await;
}
