//! The signed identity assertion (`headers.assertion`): a real gateway signs
//! `X-Client-Assertion`, the README's own PyJWT snippet verifies it against the gateway's
//! `/.certgate/jwks.json` over TLS, a client can never inject one, and
//! `certgate rotate-assertion-key` rotates with overlap on a running gateway.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::enroll::in_ci;
use support::{Echo, Harness, Options, Prepared, get, within};

const AUDIENCE: &str = "https://app.example.test";

fn options() -> Options {
    Options {
        extra_headers: vec![
            "assertion:".into(),
            format!("  audience: {AUDIENCE:?}"),
            "  ttl: 30s".into(),
            "  key_file: secrets/assertion-key.pem".into(),
        ],
        ..Options::default()
    }
}

fn certgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_certgate"))
}

/// Makes the key with the CLI, as an operator would.
fn rotate(p: &Prepared) -> String {
    let out = certgate()
        .arg("--config")
        .arg(&p.config_path)
        .args(["rotate-assertion-key", "--key-file"])
        .arg(p.dir.path().join("secrets/assertion-key.pem"))
        .output()
        .expect("run certgate");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rotate-assertion-key failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

async fn gateway() -> Harness {
    let p = Prepared::new(options()).await;
    rotate(&p);
    p.start().await
}

/// The assertion the upstream received for a request of `leaf` (a new connection each
/// time: a connection reuses its assertion while it is fresh).
async fn assertion_of(h: &Harness, leaf: &support::Leaf) -> String {
    let r = get(&h.client(Some(leaf)), &h.url("/app"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    Echo::parse(&r.body).one("x-client-assertion")
}

/// A Python that has PyJWT (with `cryptography`, which ES256 needs).
fn python_with_pyjwt() -> Option<PathBuf> {
    for candidate in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(candidate)
            .args(["-c", "import jwt, cryptography"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(PathBuf::from(candidate));
        }
    }
    let what = if in_ci() {
        "MISSING (CI=true: this is an error)"
    } else {
        "SKIPPED"
    };
    let msg = format!(
        "\n\n!!! {what}: no python3 with PyJWT; install with: apt-get install python3-jwt \
         (or pip install 'pyjwt[crypto]')\n"
    );
    assert!(!in_ci(), "{msg}");
    eprintln!("{msg}");
    None
}

/// The README's Python snippet (section "Verifying the identity in your app"), verbatim.
fn readme_snippet() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme
        .find("```python\n")
        .expect("README has a ```python block");
    let rest = &readme[start + "```python\n".len()..];
    let end = rest.find("```").expect("the block ends");
    let snippet = rest[..end].to_string();
    assert!(
        snippet.contains("def verify(") && snippet.contains("/.certgate/jwks.json"),
        "the README's Python block is not the verification snippet:\n{snippet}"
    );
    snippet
}

/// Runs the README snippet against the running gateway: `Ok(claims)` or `Err(stderr)`.
async fn verify_with_pyjwt(
    python: &PathBuf,
    h: &Harness,
    token: &str,
    audience: &str,
) -> Result<Value, String> {
    let ca = h.dir.path().join("server-ca.pem");
    std::fs::write(&ca, &h.pki.server_ca.cert_pem).expect("write CA");
    let script = format!(
        "{}\nimport sys\nJWKS_URL = sys.argv[1]\nCA_FILE = sys.argv[2]\nAUDIENCE = sys.argv[3]\n\
         print(json.dumps(verify(sys.argv[4])))\n",
        readme_snippet()
    );
    let jwks_url = format!(
        "https://localhost:{}/.certgate/jwks.json",
        h.listen().port()
    );
    // The gateway runs on this test's runtime: wait for Python off it.
    let mut cmd = Command::new(python);
    cmd.args(["-c", &script, &jwks_url])
        .arg(&ca)
        .args([audience, token]);
    let out = within(
        "python",
        tokio::task::spawn_blocking(move || cmd.output().expect("run python")),
    )
    .await
    .expect("python task");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("claims JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let part = token
        .split('.')
        .nth(1)
        .expect("a compact JWS has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let part = token.split('.').next().expect("header");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    let v: Value = serde_json::from_slice(&bytes).expect("JSON header");
    assert_eq!(v["alg"], "ES256");
    v["kid"].as_str().expect("kid").to_string()
}

#[tokio::test]
async fn the_app_verifies_the_assertion_with_pyjwt_against_the_gateway() {
    let h = gateway().await;
    let alice = h.pki.client("alice");
    let token = assertion_of(&h, &alice).await;
    let claims = claims_of(&token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["serial"], alice.serial);
    assert_eq!(claims["fingerprint"], alice.fingerprint);
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 30, "exp - iat is headers.assertion.ttl");

    // The JWK Set, on the data listener (no certificate needed) and on the admin listener.
    let anon = h.client(None);
    let jwks = get(&anon, &h.url("/.certgate/jwks.json"), &[]).await;
    assert_eq!(jwks.status, 200, "{}", jwks.text());
    assert_eq!(
        jwks.header("content-type").as_deref(),
        Some("application/jwk-set+json")
    );
    let set = jwks.json();
    let keys = set["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{set}");
    assert_eq!(keys[0]["kid"], kid_of(&token).as_str());
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert!(
        keys[0].get("d").is_none(),
        "the private key is never published"
    );
    let admin = reqwest::get(format!("http://{}/jwks.json", h.admin_addr()))
        .await
        .expect("admin jwks");
    assert_eq!(admin.status(), 200);
    let admin: Value =
        serde_json::from_slice(&admin.bytes().await.expect("admin body")).expect("admin JSON");
    assert_eq!(admin, set);

    let Some(python) = python_with_pyjwt() else {
        return;
    };
    let verified = verify_with_pyjwt(&python, &h, &token, AUDIENCE)
        .await
        .unwrap_or_else(|e| panic!("PyJWT refused the gateway's assertion: {e}"));
    assert_eq!(verified["sub"], "alice");
    assert_eq!(verified["serial"], alice.serial);
    let wrong = verify_with_pyjwt(&python, &h, &token, "https://another.app").await;
    assert!(
        wrong.as_ref().is_err_and(|e| e.contains("InvalidAudience")),
        "another audience must not verify: {wrong:?}"
    );
    // A token with one changed claim does not verify.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    {
        use base64::Engine as _;
        let mut c = claims_of(&token);
        c["sub"] = Value::from("mallory");
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string());
    }
    let forged = parts.join(".");
    let refused = verify_with_pyjwt(&python, &h, &forged, AUDIENCE).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("InvalidSignature")),
        "a changed claim must not verify: {refused:?}"
    );
}

#[tokio::test]
async fn a_client_cannot_inject_an_assertion() {
    let h = gateway().await;
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.";
    // No certificate, public route: nothing is forwarded, whatever the spelling.
    for name in [
        "X-Client-Assertion",
        "x_client_assertion",
        "X-CLIENT_ASSERTION",
    ] {
        let r = get(&h.client_h1(None), &h.url("/public/x"), &[(name, forged)]).await;
        assert_eq!(r.status, 200);
        let echo = Echo::parse(&r.body);
        assert!(
            echo.names_with_prefix("x-client").is_empty()
                && echo.names_with_prefix("x_client").is_empty(),
            "{name} reached the app: {:?}",
            echo.names_with_prefix("x")
        );
    }
    // With a certificate: the app gets exactly one assertion, certgate's.
    let bob = h.pki.client("bob");
    let r = get(
        &h.client(Some(&bob)),
        &h.url("/app"),
        &[("X-Client-Assertion", forged)],
    )
    .await;
    let echo = Echo::parse(&r.body);
    let got = echo.all("x-client-assertion");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_ne!(got[0], forged);
    assert_eq!(claims_of(&got[0])["sub"], "bob");
}

#[tokio::test]
async fn a_connection_reuses_its_assertion_and_other_users_get_their_own() {
    let h = gateway().await;
    let (alice, bob) = (h.pki.client("alice"), h.pki.client("bob"));
    let client = h.client(Some(&alice));
    let first =
        Echo::parse(&get(&client, &h.url("/app/1"), &[]).await.body).one("x-client-assertion");
    let second =
        Echo::parse(&get(&client, &h.url("/app/2"), &[]).await.body).one("x-client-assertion");
    assert_eq!(
        first, second,
        "one connection signs once while the token is fresh"
    );
    let other = assertion_of(&h, &bob).await;
    assert_eq!(claims_of(&other)["sub"], "bob");
    // Public routes carry no identity, so no assertion.
    let r = get(&client, &h.url("/public/y"), &[]).await;
    assert!(!Echo::parse(&r.body).has("x-client-assertion"));
}

#[tokio::test]
async fn a_rotation_on_a_running_gateway_keeps_old_assertions_verifiable() {
    let h = gateway().await;
    let alice = h.pki.client("alice");
    let before = assertion_of(&h, &alice).await;
    let old_kid = kid_of(&before);

    let out = rotate(&h);
    assert!(out.contains(&old_kid), "the CLI names the kept key: {out}");
    // The gateway watches the key files; a reload is also what SIGHUP does.
    let anon = h.client(None);
    let set = within("the new key published", async {
        loop {
            let r = get(&anon, &h.url("/.certgate/jwks.json"), &[]).await;
            let v = r.json();
            if v["keys"].as_array().is_some_and(|k| k.len() == 2) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let kids: Vec<&str> = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(kids.contains(&old_kid.as_str()), "{kids:?}");
    let after = assertion_of(&h, &alice).await;
    let new_kid = kid_of(&after);
    assert_ne!(
        new_kid, old_kid,
        "new assertions are signed with the new key"
    );
    assert!(kids.contains(&new_kid.as_str()));

    let Some(python) = python_with_pyjwt() else {
        return;
    };
    for (what, token) in [("before", &before), ("after", &after)] {
        verify_with_pyjwt(&python, &h, token, AUDIENCE)
            .await
            .unwrap_or_else(|e| panic!("the assertion from {what} the rotation: {e}"));
    }
}

#[test]
fn config_errors_say_what_to_do() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = rt.block_on(Prepared::new(options()));
    let check = || {
        let out = certgate()
            .arg("--config")
            .arg(&p.config_path)
            .arg("check-config")
            .output()
            .expect("run certgate");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // No key yet.
    let (code, err) = check();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("headers.assertion.key_file")
            && err.contains("assertion-key.pem")
            && err.contains("rotate-assertion-key"),
        "{err}"
    );
    // A key others can read.
    let key = p.dir.path().join("secrets/assertion-key.pem");
    rotate(&p);
    assert_eq!(check().0, Some(0), "{}", check().1);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (code, err) = check();
    assert_eq!(code, Some(2));
    assert!(err.contains("headers.assertion.key_file"), "{err}");
    // Not a P-256 key.
    std::fs::write(&key, &p.pki.server_ca.cert_pem).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (code, err) = check();
    assert_eq!(code, Some(2));
    assert!(
        err.contains("P-256") && err.contains("openssl genpkey"),
        "{err}"
    );
}
