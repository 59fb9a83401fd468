//! Enrollment from the user's side: tickets from the admin API, the three enrollment
//! requests, and the external tools that judge the result (`openssl`, NSS `pk12util`).
//!
//! A missing external tool skips the check with a loud message on a developer machine, and
//! fails the test under `CI=true` (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::client::Resp;
use super::gateway::Harness;
use super::within;

/// Whether `CI=true` (then missing tools are failures).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The path of `name` on `PATH`, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether every tool in `names` is installed. Missing tools fail the test under CI and
/// print a loud notice otherwise (the caller then skips what needs them).
pub fn tools(names: &[&str], install_hint: &str) -> bool {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| which(n).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let what = if in_ci() {
        "MISSING (CI=true: this is an error)"
    } else {
        "SKIPPED"
    };
    let msg = format!(
        "\n\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! {what}: {} not installed; install with: {install_hint}\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
        missing.join(", ")
    );
    assert!(!in_ci(), "{msg}");
    // Shown even for a passing test: `.config/nextest.toml` prints these tests' output.
    eprintln!("{msg}");
    false
}

/// Runs a command, feeding `stdin`, and returns its output (whatever the exit status).
pub fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("wait for child")
}

/// Runs a command and asserts success; returns stdout and stderr as text.
pub fn run_ok(program: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = run(program, args, stdin);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// A key type for `openssl req -newkey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    P256,
    P384,
    Ed25519,
    Rsa(u32),
    Secp256k1,
}

impl KeyKind {
    fn newkey(self) -> Vec<String> {
        match self {
            KeyKind::P256 => vec![
                "-newkey".into(),
                "ec".into(),
                "-pkeyopt".into(),
                "ec_paramgen_curve:P-256".into(),
            ],
            KeyKind::P384 => vec![
                "-newkey".into(),
                "ec".into(),
                "-pkeyopt".into(),
                "ec_paramgen_curve:P-384".into(),
            ],
            KeyKind::Secp256k1 => vec![
                "-newkey".into(),
                "ec".into(),
                "-pkeyopt".into(),
                "ec_paramgen_curve:secp256k1".into(),
            ],
            KeyKind::Ed25519 => vec!["-newkey".into(), "ed25519".into()],
            KeyKind::Rsa(bits) => vec!["-newkey".into(), format!("rsa:{bits}")],
        }
    }
}

/// A key and a PEM CSR made by `openssl req` in `dir`, asking for a subject and SAN that
/// certgate must ignore. Returns (key PEM, CSR PEM).
pub fn openssl_csr(dir: &Path, kind: KeyKind, name: &str) -> (String, String) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut args: Vec<String> = vec!["req".into(), "-new".into()];
    args.extend(kind.newkey());
    args.extend([
        "-nodes".into(),
        "-keyout".into(),
        key.display().to_string(),
        "-subj".into(),
        "/CN=mallory/O=Evil".into(),
        "-addext".into(),
        "subjectAltName=URI:urn:certgate:account:mallory,URI:urn:certgate:generation:99".into(),
        "-out".into(),
        csr.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok("openssl", &args, None);
    (
        std::fs::read_to_string(key).expect("key"),
        std::fs::read_to_string(csr).expect("csr"),
    )
}

/// `POST /v1/accounts/{account}/two-factor` → the ticket.
pub async fn enable(h: &Harness, account: &str) -> String {
    let r = h
        .admin()
        .post(&format!("/v1/accounts/{account}/two-factor"), None)
        .await;
    assert!(
        (200..300).contains(&r.status),
        "enable {account}: {}",
        r.text()
    );
    ticket_of(&r)
}

/// `POST /v1/accounts/{account}/tickets` → a fresh ticket.
pub async fn new_ticket(h: &Harness, account: &str) -> String {
    let r = h
        .admin()
        .post(&format!("/v1/accounts/{account}/tickets"), None)
        .await;
    assert!(
        (200..300).contains(&r.status),
        "ticket {account}: {}",
        r.text()
    );
    ticket_of(&r)
}

pub fn ticket_of(r: &Resp) -> String {
    r.json()["ticket"]
        .as_str()
        .unwrap_or_else(|| panic!("no ticket in {}", r.text()))
        .to_string()
}

/// An anonymous client of the gateway (no client certificate).
pub fn anonymous(h: &Harness) -> reqwest::Client {
    h.client(None)
}

async fn send(req: reqwest::RequestBuilder, what: &str) -> Resp {
    let resp = within(what, req.send())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    Resp::from_reqwest(resp).await
}

/// `GET /.certgate/enroll?ticket=…` as a browser would ask.
pub async fn page(h: &Harness, ticket: &str) -> Resp {
    let url = h.url(&format!("/.certgate/enroll?ticket={ticket}"));
    send(
        anonymous(h).get(url).header("accept", "text/html"),
        "GET enroll page",
    )
    .await
}

/// `POST /.certgate/enroll/pkcs12` with the form fields, as JSON-wanting client.
pub async fn pkcs12(h: &Harness, ticket: &str, passphrase: &str) -> Resp {
    let body = format!(
        "ticket={}&passphrase={}",
        form_escape(ticket),
        form_escape(passphrase)
    );
    send(
        anonymous(h)
            .post(h.url("/.certgate/enroll/pkcs12"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body),
        "POST pkcs12",
    )
    .await
}

/// `POST /.certgate/enroll/csr` with `Authorization: Bearer <ticket>`.
pub async fn csr(h: &Harness, ticket: Option<&str>, body: impl Into<reqwest::Body>) -> Resp {
    let mut req = anonymous(h)
        .post(h.url("/.certgate/enroll/csr"))
        .header("content-type", "application/pkcs10")
        .body(body);
    if let Some(t) = ticket {
        req = req.bearer_auth(t);
    }
    send(req, "POST csr").await
}

/// `application/x-www-form-urlencoded` escaping of one value.
pub fn form_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b' ' => out.push('+'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A client presenting `cert_pem` (leaf, maybe chain) with `key_pem`.
pub fn client_with(h: &Harness, cert_pem: &str, key_pem: &str) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(h.pki.server_ca.cert_pem.as_bytes()).expect("CA");
    let identity = reqwest::Identity::from_pem(format!("{cert_pem}{key_pem}").as_bytes())
        .expect("identity from PEM");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve("localhost", h.listen())
        .no_proxy()
        .timeout(super::STEP)
        .identity(identity)
        .build()
        .expect("client")
}

/// A new P-256 key and a CSR for it, made in-process: (key PEM, CSR PEM).
pub fn p256_key_and_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key.serialize_pem(), csr)
}

/// `GET url` with `client`.
pub async fn get(client: &reqwest::Client, url: &str) -> Resp {
    send(client.get(url), &format!("GET {url}")).await
}

/// The first PEM certificate of a chain.
pub fn first_pem(chain: &str) -> String {
    let end = "-----END CERTIFICATE-----";
    let i = chain.find(end).expect("a PEM certificate") + end.len();
    format!("{}\n", &chain[..i])
}

/// The DER of the first PEM certificate.
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("PEM certificate")
        .as_ref()
        .to_vec()
}

/// The value of one counter sample in Prometheus text, e.g.
/// `certgate_enrollments_total{result="success"}`; 0 when absent.
pub async fn metric(h: &Harness, name: &str) -> f64 {
    super::sample(&h.metrics_text().await, name).unwrap_or(0.0)
}
