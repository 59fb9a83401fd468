//! The user journey in a real browser (headless Chromium, its NSS certificate store):
//! open the enrollment link, generate the certificate with the page's form, import the
//! download with `pk12util`, sign in with the certificate. Twice: with page scripts on (the
//! browser makes the key and sends only a CSR; the gateway never sees the key) and off (the
//! gateway makes the PKCS#12), then a reset and its page.
//!
//! Needs `chromium` and NSS tools (`libnss3-tools`): without them the test is skipped with
//! a loud message, except under `CI=true`, where it fails. Screenshots of each step are
//! kept under `target/browser-screenshots/`.

mod support;

use std::path::PathBuf;

use std::process::Command;

use base64::Engine as _;
use support::browser::{AutoSelectPolicy, Browser, Nss, Tab, WAIT};
use support::enroll::{self as en, tools};
use support::process::start;
use support::{Echo, Harness, Options, Prepared};

const PASS: &str = "browser passphrase";

/// Chromium, NSS tools and OpenSSL are here (else a loud skip; a failure under `CI=true`).
fn browser_tools() -> bool {
    tools(
        &["chromium", "pk12util", "certutil", "openssl"],
        "apt-get install chromium libnss3-tools openssl",
    )
}

/// The real `certgate run` with no lame duck and `enrollment_extra` appended to its
/// `enrollment` section.
async fn real_gateway(enrollment_extra: &str) -> (Prepared, support::process::Running) {
    let p = Prepared::new(Options {
        extra: "shutdown:\n  drain_delay: 0s\n".into(),
        ..Options::default()
    })
    .await;
    let yaml = std::fs::read_to_string(&p.config_path).unwrap().replace(
        "enrollment:\n  enabled: true\n",
        &format!("enrollment:\n  enabled: true\n{enrollment_extra}"),
    );
    std::fs::write(&p.config_path, yaml).unwrap();
    let gw = start(&p);
    (p, gw)
}

/// The certificate policy for `origin`, or `None` after a loud message when the policy
/// folder cannot be written (a failure under `CI=true`).
fn policy_or_skip(origin: &str) -> Option<AutoSelectPolicy> {
    match AutoSelectPolicy::install(origin) {
        Ok(p) => Some(p),
        Err(e) => {
            assert!(!en::in_ci(), "cannot write the Chromium policy: {e}");
            eprintln!("\n!!! SKIPPED the signed-in part: cannot write the Chromium policy: {e}\n");
            None
        }
    }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_enrolls_signs_in_and_sees_the_reset_page() {
    if !tools(
        &["chromium", "pk12util", "certutil"],
        "apt-get install chromium libnss3-tools",
    ) {
        return;
    }
    let h = Harness::start().await;
    let work = tempfile::tempdir().unwrap();
    let shots = screenshots();
    let nss = Nss::new(&work.path().join("home"), &h.pki.server_ca.cert_pem);
    let downloads = work.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();

    // 1. The admin enables two-factor for alice; alice opens the link.
    let ticket = en::enable(&h, "alice").await;
    let link = h.url(&format!("/.certgate/enroll?ticket={ticket}"));
    let mut browser = Browser::launch(&nss.home, &work.path().join("profile-1")).await;
    browser.allow_downloads(&downloads).await;
    let tab = browser.tab().await;
    browser
        .call(
            "Emulation.setScriptExecutionDisabled",
            serde_json::json!({ "value": true }),
            Some(&tab.session),
        )
        .await;
    browser.navigate(&tab, &link).await;
    let html = browser.html(&tab).await;
    assert!(html.contains("Client Certificate Initialization"), "{html}");
    assert!(html.contains("<b id=\"account\">alice</b>"), "{html}");
    assert!(
        html.contains("Without JavaScript, the gateway makes your private key"),
        "the page says who makes the key when its script does not run: {html}"
    );
    browser
        .screenshot(&tab, &shots.join("1-enrollment-page.png"))
        .await;

    // 2. A passphrase, Generate Certificate: the browser downloads alice.p12.
    browser.type_into(&tab, "#passphrase", PASS).await;
    browser.click(&tab, "#generate").await;
    let begin = browser
        .event(
            "Browser.downloadWillBegin",
            None,
            support::browser::WAIT,
            |_| true,
        )
        .await;
    assert_eq!(begin["suggestedFilename"], "alice.p12", "{begin}");
    let guid = begin["guid"].as_str().unwrap().to_string();
    let done = browser
        .event(
            "Browser.downloadProgress",
            None,
            support::browser::WAIT,
            |p| p["guid"] == guid.as_str() && p["state"] != "inProgress",
        )
        .await;
    assert_eq!(done["state"], "completed", "{done}");
    browser.close().await;
    let p12 = downloads.join("alice.p12");
    let bytes = std::fs::read(&p12).expect("the download is on disk");
    assert!(bytes.len() > 500, "a PKCS#12 file, {} bytes", bytes.len());

    // 3. Imported into the browser's NSS store.
    let out = nss.import_p12(&p12, PASS);
    assert!(out.contains("PKCS12 IMPORT SUCCESSFUL"), "{out}");

    // 4. A browser on that store, told to present the certificate to the gateway's origin,
    //    signs in: the upstream answers for alice.
    let origin = format!("https://localhost:{}", h.listen().port());
    let Some(_policy) = policy_or_skip(&origin) else {
        h.shutdown().await;
        return;
    };
    let mut browser = Browser::launch(&nss.home, &work.path().join("profile-2")).await;
    let tab = browser.tab().await;
    browser.navigate(&tab, &h.url("/hello")).await;
    browser
        .screenshot(&tab, &shots.join("2-signed-in.png"))
        .await;
    let text = browser.text(&tab).await;
    let echo = Echo::parse(text.as_bytes());
    assert_eq!(echo.one("x-client-account"), "alice");
    assert_eq!(echo.uri, "/hello");
    let serial = echo.one("x-client-cert-serial");
    let r = h.admin().get("/v1/accounts/alice").await;
    assert!(r.text().contains(&serial), "{}", r.text());

    // 5. The admin resets alice: the same browser, same certificate, gets the reset page.
    h.admin().reset("alice").await;
    browser.navigate(&tab, &h.url("/hello")).await;
    browser
        .screenshot(&tab, &shots.join("3-after-reset.png"))
        .await;
    let html = browser.html(&tab).await;
    assert!(html.contains("Certificate replaced"), "{html}");
    assert!(html.contains("no longer counts"), "{html}");
    assert!(html.contains("enrollment link"), "{html}");
    browser.close().await;
    h.shutdown().await;
}

/// Two-factor on for `account` through the admin API of `gw`; the enrollment ticket.
async fn enable(gw: &support::process::Running, token: &str, account: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/accounts/{account}/two-factor",
            gw.admin
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    v["ticket"].as_str().expect("ticket").to_string()
}

/// The value of a JavaScript expression in the tab.
async fn eval(browser: &mut Browser, tab: &Tab, expression: &str) -> serde_json::Value {
    let r = browser
        .call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            Some(&tab.session),
        )
        .await;
    r["result"]["value"].clone()
}

/// Waits for the download that `Browser.downloadWillBegin` announces; its file name.
async fn wait_download(browser: &mut Browser) -> String {
    let begin = browser
        .event("Browser.downloadWillBegin", None, WAIT, |_| true)
        .await;
    let guid = begin["guid"].as_str().unwrap().to_string();
    let done = browser
        .event("Browser.downloadProgress", None, WAIT, |p| {
            p["guid"] == guid.as_str() && p["state"] != "inProgress"
        })
        .await;
    assert_eq!(done["state"], "completed", "{done}");
    begin["suggestedFilename"].as_str().unwrap().to_string()
}

/// Types the passphrase, clicks Generate Certificate, waits until the page says it is done
/// (failing with what the page reports otherwise) and the download is complete; its name.
async fn generate_in_page(browser: &mut Browser, tab: &Tab) -> String {
    browser.type_into(tab, "#passphrase", PASS).await;
    browser.click(tab, "#generate").await;
    // The page shows either the result or what went wrong.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let state = eval(
            browser,
            tab,
            "JSON.stringify([document.getElementById('done').hidden, \
             document.getElementById('error').textContent, \
             document.getElementById('status').textContent])",
        )
        .await;
        let state: serde_json::Value =
            serde_json::from_str(state.as_str().unwrap_or("[]")).unwrap_or_default();
        let error = state[1].as_str().unwrap_or_default();
        assert!(error.is_empty(), "the page reports: {error}");
        if state[0] == serde_json::json!(false) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page did not finish: {state}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    wait_download(browser).await
}

/// The body of a request seen by the Network domain (inline, or in its entries).
fn post_data(request: &serde_json::Value) -> String {
    if let Some(s) = request["postData"].as_str() {
        return s.to_string();
    }
    let mut out = Vec::new();
    for e in request["postDataEntries"].as_array().into_iter().flatten() {
        if let Some(b) = e["bytes"].as_str() {
            out.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .unwrap_or_default(),
            );
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_makes_the_key_and_sends_only_a_csr() {
    if !browser_tools() {
        return;
    }
    // The real binary, so its log shows how each certificate was issued.
    let (p, mut gw) = real_gateway("").await;
    let work = tempfile::tempdir().unwrap();
    let shots = screenshots();
    let nss = Nss::new(&work.path().join("home"), &p.pki.server_ca.cert_pem);
    let downloads = work.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let base = format!("https://localhost:{}", gw.listen.port());

    // 1. The admin enables two-factor for alice (the admin API, its token).
    let ticket = enable(&gw, &p.token, "alice").await;

    // 2. The enrollment page with scripts on: the script says the key stays here.
    let mut browser = Browser::launch(&nss.home, &work.path().join("profile-js")).await;
    browser.allow_downloads(&downloads).await;
    let tab = browser.tab().await;
    browser
        .call("Network.enable", serde_json::json!({}), Some(&tab.session))
        .await;
    browser
        .navigate(&tab, &format!("{base}/.certgate/enroll?ticket={ticket}"))
        .await;
    let mode = eval(
        &mut browser,
        &tab,
        "document.getElementById('mode').textContent",
    )
    .await;
    assert!(
        mode.as_str()
            .unwrap_or_default()
            .contains("never leaves this page"),
        "the page script did not run: {mode}; page: {}",
        browser.html(&tab).await
    );
    let choice = eval(
        &mut browser,
        &tab,
        "document.getElementById('key-choice').hidden",
    )
    .await;
    assert_eq!(
        choice,
        serde_json::json!(false),
        "the key type choice is shown"
    );
    browser
        .screenshot(&tab, &shots.join("js-1-enrollment-page.png"))
        .await;

    // 3. Passphrase, Generate Certificate: alice.p12 is made in the browser.
    let name = generate_in_page(&mut browser, &tab).await;
    assert_eq!(name, "alice.p12");
    let done = eval(&mut browser, &tab, "document.getElementById('done').hidden").await;
    assert_eq!(
        done,
        serde_json::json!(false),
        "the page says the certificate is ready"
    );
    browser
        .screenshot(&tab, &shots.join("js-2-certificate-ready.png"))
        .await;

    // What the page sent: one CSR to /enroll/csr, no private key, nothing to /enroll/pkcs12.
    let requests = browser.take_events("Network.requestWillBeSent").await;
    let posts: Vec<&serde_json::Value> = requests
        .iter()
        .map(|e| &e["request"])
        .filter(|r| r["method"] == "POST")
        .collect();
    assert_eq!(
        posts.len(),
        1,
        "one POST: {:?}",
        posts.iter().map(|r| &r["url"]).collect::<Vec<_>>()
    );
    let post = posts[0];
    assert_eq!(post["url"], format!("{base}/.certgate/enroll/csr"));
    let body = post_data(post);
    assert!(
        body.contains("-----BEGIN CERTIFICATE REQUEST-----"),
        "the page sent a CSR: {body}"
    );
    assert!(!body.contains("PRIVATE KEY"), "the page sent a key: {body}");
    assert!(
        !requests.iter().any(|e| e["request"]["url"]
            .as_str()
            .unwrap_or("")
            .contains("/enroll/pkcs12")),
        "the server-side path was used"
    );

    // RSA 2048, for the stores that need it: bob picks it.
    let bob_ticket = enable(&gw, &p.token, "bob").await;
    browser
        .navigate(
            &tab,
            &format!("{base}/.certgate/enroll?ticket={bob_ticket}"),
        )
        .await;
    eval(
        &mut browser,
        &tab,
        "document.getElementById('key_type').value = 'rsa-2048'",
    )
    .await;
    assert_eq!(generate_in_page(&mut browser, &tab).await, "bob.p12");
    browser.close().await;
    let bob = downloads.join("bob.p12");
    let bob_key = openssl(&[
        "pkcs12",
        "-in",
        bob.to_str().unwrap(),
        "-passin",
        &format!("pass:{PASS}"),
        "-nocerts",
        "-nodes",
    ]);
    let bob_key_file = work.path().join("bob.key");
    std::fs::write(&bob_key_file, &bob_key).unwrap();
    let text = openssl(&[
        "pkey",
        "-in",
        bob_key_file.to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(text.contains("Private-Key: (2048 bit"), "{text}");

    // 4. OpenSSL reads the browser-made file with the passphrase: the algorithms of the
    //    server-made one, the key and the certificate a pair.
    let p12 = downloads.join("alice.p12");
    let p12s = p12.to_str().unwrap();
    let pass = format!("pass:{PASS}");
    let info = Command::new("openssl")
        .args(["pkcs12", "-info", "-noout", "-in", p12s, "-passin", &pass])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stderr).into_owned();
    assert!(info.contains("MAC: sha256, Iteration 100000"), "{info}");
    assert!(info.contains("salt length: 8"), "{info}");
    assert!(
        info.contains(
            "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 100000, PRF hmacWithSHA256"
        ),
        "{info}"
    );
    let certs = openssl(&["pkcs12", "-in", p12s, "-passin", &pass, "-nokeys"]);
    assert_eq!(
        certs.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf and CA: {certs}"
    );
    let key = openssl(&[
        "pkcs12", "-in", p12s, "-passin", &pass, "-nocerts", "-nodes",
    ]);
    let key_file = work.path().join("alice.key");
    std::fs::write(&key_file, &key).unwrap();
    let cert_file = work.path().join("alice.pem");
    std::fs::write(&cert_file, &certs).unwrap();
    let from_key = openssl(&["pkey", "-in", key_file.to_str().unwrap(), "-pubout"]);
    let from_cert = openssl(&[
        "x509",
        "-in",
        cert_file.to_str().unwrap(),
        "-noout",
        "-pubkey",
    ]);
    assert_eq!(
        from_key, from_cert,
        "the PKCS#12's key is the certificate's"
    );
    assert!(from_key.contains("PUBLIC KEY"));
    let subject = openssl(&[
        "x509",
        "-in",
        cert_file.to_str().unwrap(),
        "-noout",
        "-subject",
    ]);
    assert!(subject.contains("alice"), "{subject}");

    // The gateway issued it from a CSR and made no key.
    let log = gw.log();
    let issued: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("certificate issued"))
        .collect();
    assert_eq!(issued.len(), 2, "alice's and bob's: {log}");
    assert!(
        issued.iter().all(|l| l.contains("method=\"csr\"")),
        "{issued:?}"
    );
    assert!(!log.contains("method=\"pkcs12\""), "{log}");

    // 5. Imported into NSS, the browser signs in as alice.
    let out = nss.import_p12(&p12, PASS);
    assert!(out.contains("PKCS12 IMPORT SUCCESSFUL"), "{out}");
    let Some(_policy) = policy_or_skip(&base) else {
        return;
    };
    let mut browser = Browser::launch(&nss.home, &work.path().join("profile-js-2")).await;
    let tab = browser.tab().await;
    browser.navigate(&tab, &format!("{base}/hello")).await;
    browser
        .screenshot(&tab, &shots.join("js-3-signed-in.png"))
        .await;
    let text = browser.text(&tab).await;
    let echo = Echo::parse(text.as_bytes());
    assert_eq!(echo.one("x-client-account"), "alice");
    browser.close().await;
    gw.signal(libc::SIGTERM);
    assert_eq!(gw.wait_exit(std::time::Duration::from_secs(20)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_renews_on_the_certificate_page_and_the_old_one_retires() {
    if !browser_tools() {
        return;
    }
    // renew_before longer than the validity: a new certificate is due at once.
    let (p, mut gw) = real_gateway("  renew_before: 400d\n").await;
    let work = tempfile::tempdir().unwrap();
    let shots = screenshots();
    let base = format!("https://localhost:{}", gw.listen.port());
    let Some(_policy) = policy_or_skip(&base) else {
        return;
    };

    // 1. The first certificate, made in the browser from the enrollment link.
    let first = Nss::new(&work.path().join("home-1"), &p.pki.server_ca.cert_pem);
    let downloads_1 = work.path().join("downloads-1");
    std::fs::create_dir_all(&downloads_1).unwrap();
    let ticket = enable(&gw, &p.token, "alice").await;
    let mut browser = Browser::launch(&first.home, &work.path().join("profile-1")).await;
    browser.allow_downloads(&downloads_1).await;
    let tab = browser.tab().await;
    browser
        .navigate(&tab, &format!("{base}/.certgate/enroll?ticket={ticket}"))
        .await;
    assert_eq!(generate_in_page(&mut browser, &tab).await, "alice.p12");
    browser.close().await;
    let old_p12 = downloads_1.join("alice.p12");
    let out = first.import_p12(&old_p12, PASS);
    assert!(out.contains("PKCS12 IMPORT SUCCESSFUL"), "{out}");

    // 2. Signed in with it, the certificate page offers renewal; renewed in the browser.
    let downloads_2 = work.path().join("downloads-2");
    std::fs::create_dir_all(&downloads_2).unwrap();
    let mut browser = Browser::launch(&first.home, &work.path().join("profile-2")).await;
    browser.allow_downloads(&downloads_2).await;
    let tab = browser.tab().await;
    browser
        .navigate(&tab, &format!("{base}/.certgate/certificate"))
        .await;
    let html = browser.html(&tab).await;
    assert!(html.contains("Managing your client certificate"), "{html}");
    assert!(html.contains("Renew your certificate"), "{html}");
    let old_serial = eval(
        &mut browser,
        &tab,
        "document.getElementById('serial').textContent",
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_string();
    assert!(!old_serial.is_empty(), "{html}");
    browser
        .screenshot(&tab, &shots.join("renew-1-certificate-page.png"))
        .await;
    assert_eq!(generate_in_page(&mut browser, &tab).await, "alice.p12");
    browser
        .screenshot(&tab, &shots.join("renew-2-renewed.png"))
        .await;
    browser.close().await;
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("certificate renewed") && l.contains(&old_serial)),
        "{log}"
    );
    assert!(
        !log.contains("method=\"pkcs12\""),
        "no key made by the gateway: {log}"
    );

    // 3. A browser with only the new certificate signs in: a new serial, same account.
    let second = Nss::new(&work.path().join("home-2"), &p.pki.server_ca.cert_pem);
    let out = second.import_p12(&downloads_2.join("alice.p12"), PASS);
    assert!(out.contains("PKCS12 IMPORT SUCCESSFUL"), "{out}");
    let mut browser = Browser::launch(&second.home, &work.path().join("profile-3")).await;
    let tab = browser.tab().await;
    browser.navigate(&tab, &format!("{base}/hello")).await;
    let echo = Echo::parse(browser.text(&tab).await.as_bytes());
    assert_eq!(echo.one("x-client-account"), "alice");
    let new_serial = echo.one("x-client-cert-serial");
    assert_ne!(new_serial, old_serial);
    browser.close().await;

    // 4. That first use retired the old certificate: refused from then on.
    let pass = format!("pass:{PASS}");
    let p12s = old_p12.to_str().unwrap();
    let old_cert = openssl(&[
        "pkcs12", "-in", p12s, "-passin", &pass, "-nokeys", "-clcerts",
    ]);
    let old_key = openssl(&[
        "pkcs12", "-in", p12s, "-passin", &pass, "-nocerts", "-nodes",
    ]);
    let identity = reqwest::Identity::from_pem(format!("{old_cert}{old_key}").as_bytes()).unwrap();
    let ca = reqwest::Certificate::from_pem(p.pki.server_ca.cert_pem.as_bytes()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        // A new connection each time (a revoked certificate's open ones are closed).
        let client = reqwest::Client::builder()
            .tls_certs_only([ca.clone()])
            .resolve("localhost", gw.listen)
            .no_proxy()
            .identity(identity.clone())
            .build()
            .unwrap();
        let r = client.get(format!("{base}/hello")).send().await.unwrap();
        if r.status() == 403 {
            let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            assert_eq!(v["error"], "revoked", "{v}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old certificate still works: {}",
            r.status()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    gw.signal(libc::SIGTERM);
    assert_eq!(gw.wait_exit(std::time::Duration::from_secs(20)), Some(0));
}

/// What a user with an expired certificate sees in Chromium: the page that says so, or,
/// where the browser does not offer an expired certificate at all, the no-certificate page
/// with its steps; never a TLS error page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_with_an_expired_certificate_sees_a_page() {
    if !browser_tools() {
        return;
    }
    let h = Harness::start().await;
    en::enable(&h, "gina").await;
    let generation = h.admin().generation("gina").await;
    let old = h.pki.enrolled_expired("gina", generation);
    let work = tempfile::tempdir().unwrap();
    let nss = Nss::new(&work.path().join("home"), &h.pki.server_ca.cert_pem);
    let pem = work.path().join("gina.pem");
    std::fs::write(&pem, String::from_utf8(old.identity_pem()).unwrap()).unwrap();
    let p12 = work.path().join("gina.p12");
    openssl(&[
        "pkcs12",
        "-export",
        "-in",
        pem.to_str().unwrap(),
        "-out",
        p12.to_str().unwrap(),
        "-passout",
        &format!("pass:{PASS}"),
        "-name",
        "gina (certgate)",
    ]);
    let out = nss.import_p12(&p12, PASS);
    assert!(out.contains("PKCS12 IMPORT SUCCESSFUL"), "{out}");
    let origin = format!("https://localhost:{}", h.listen().port());
    let Some(_policy) = policy_or_skip(&origin) else {
        return;
    };
    let mut browser = Browser::launch(&nss.home, &work.path().join("profile")).await;
    let tab = browser.tab().await;
    browser.navigate(&tab, &h.url("/hello")).await;
    browser
        .screenshot(&tab, &screenshots().join("expired-certificate.png"))
        .await;
    let html = browser.html(&tab).await;
    // Chromium does not offer an expired certificate: the no-certificate page, which says
    // that expiry is a reason; a client that presents it gets the expired page
    // (tests/renew.rs).
    assert!(
        html.contains("Certificate expired")
            || (html.contains("Client certificate required")
                && html.contains("browsers stop offering an expired certificate")),
        "{html}"
    );
    assert!(h.upstream.seen_with_prefix("/hello").is_empty());
    browser.close().await;
    h.shutdown().await;
}
