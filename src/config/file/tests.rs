//! Config tests: inline YAML against a PKI generated at test time.
//!
//! Why this file is over 800 lines: every key of `certgate.yaml` has its good and bad
//! values tested here, on one generated PKI; it follows `file.rs` section by section.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};
use tempfile::TempDir;

use super::*;
use crate::config::yaml::strip_comment;
use crate::config::{ClientAuthMode, LogFormat, OnError, RedisMode, TlsMinVersion};

/// A throwaway PKI in a temp folder:
/// `certs/` server cert and key, a client CA, the enrollment CA, CRLs and broken files;
/// `secrets/admin-token`. The config file is imagined at `<dir>/certgate.yaml`.
struct Pki {
    dir: TempDir,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn crl_pem(issuer: &Issuer<'_, &KeyPair>, next_update_days: i64, serials: &[&[u8]]) -> String {
    let now = time::OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now + time::Duration::days(next_update_days - 2),
        next_update: now + time::Duration::days(next_update_days),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: now - time::Duration::days(1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .unwrap()
    .pem()
    .unwrap()
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
        let write = |name: &str, text: &str| std::fs::write(certs.join(name), text).unwrap();

        // Server: a leaf for localhost and its key, plus an unrelated key.
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&server_key)
            .unwrap();
        write("server.pem", &server.pem());
        write("server.key", &server_key.serialize_pem());
        write("other.key", &KeyPair::generate().unwrap().serialize_pem());

        // Client CA, with a CRL revoking serial 00:8f:01 and an expired CRL.
        let client_key = KeyPair::generate().unwrap();
        let client_params = ca_params("Test Client CA");
        let client_ca = client_params.self_signed(&client_key).unwrap();
        write("client-ca.pem", &client_ca.pem());
        let client_issuer = Issuer::new(client_params, &client_key);
        let crl = crl_pem(&client_issuer, 7, &[&[0x00, 0x8f, 0x01], &[0x12, 0x34]]);
        write("client-ca.crl.pem", &crl);
        let der =
            rustls_pki_types::CertificateRevocationListDer::from_pem_slice(crl.as_bytes()).unwrap();
        std::fs::write(certs.join("client-ca.crl"), der.as_ref()).unwrap();
        write("expired.crl.pem", &crl_pem(&client_issuer, -1, &[]));
        write("garbage.crl", "this is not a CRL\n");

        // Enrollment CA.
        let enroll_key = KeyPair::generate().unwrap();
        let enroll_ca = ca_params("Test Enrollment CA")
            .self_signed(&enroll_key)
            .unwrap();
        write("enroll-ca.pem", &enroll_ca.pem());
        write("enroll-ca.key", &enroll_key.serialize_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(certs.join("enroll-ca.key"), private).unwrap();
        }

        write("empty.pem", "# nothing here\n");
        std::fs::write(
            dir.path().join("secrets/admin-token"),
            "s3cret-token-value\n",
        )
        .unwrap();
        Pki { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The imagined config file.
    fn config_path(&self) -> PathBuf {
        self.path("certgate.yaml")
    }

    fn load(&self, yaml: &str) -> Result<Config, ConfigError> {
        from_yaml(yaml, &self.config_path())
    }

    fn error(&self, yaml: &str) -> ConfigError {
        match self.load(yaml) {
            Ok(_) => panic!("expected an error for:\n{yaml}"),
            Err(e) => e,
        }
    }
}

/// The smallest valid config: the required keys; the enrollment CA and admin token are
/// found at their default paths.
const MINIMAL: &str = "\
tls:
  cert: certs/server.pem
  key: certs/server.key
upstream:
  url: \"http://127.0.0.1:8080\"
";

/// 1-based line of the first line of `yaml` containing `needle`.
fn line_of(yaml: &str, needle: &str) -> usize {
    yaml.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in yaml"))
        + 1
}

/// Asserts the error names the file, the line and the key, and that its message (and so
/// its Display) contains every one of `words`.
#[track_caller]
fn assert_error(pki: &Pki, err: &ConfigError, line: Option<usize>, key: &str, words: &[&str]) {
    assert_eq!(err.file, pki.config_path(), "{err}");
    assert_eq!(err.line, line, "{err}");
    assert_eq!(err.key, key, "{err}");
    for w in words {
        assert!(err.message.contains(w), "{w:?} missing from: {err}");
    }
    let shown = err.to_string();
    let prefix = match line {
        Some(l) => format!("{}:{l}: {key}: ", pki.config_path().display()),
        None => format!("{}: {key}: ", pki.config_path().display()),
    };
    assert!(
        shown.starts_with(&prefix),
        "{shown:?} does not start with {prefix:?}"
    );
}

/// `MINIMAL` plus `extra` (top-level sections).
fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

#[test]
fn full_config_with_every_key() {
    let pki = Pki::new();
    let yaml = "\
listen: \"127.0.0.1:18443\"
listen_proxy_protocol: false
server_names: [\"Gate.Example.COM\", localhost]
tls:
  cert: certs/server.pem
  key: certs/server.key
  min_version: \"1.3\"
  session_resumption: false
client_auth:
  mode: required
  trusted_cas: [certs/client-ca.pem]
  crls:
    - certs/client-ca.crl.pem
    - certs/client-ca.crl
identity:
  account_from: [subject_cn, san_email]
  uri_prefix: \"urn:example:\"
upstream:
  url: \"https://app.internal:9000/base\"
  connect_timeout: 500ms
  response_timeout: 2m
  pool_idle_timeout: 1h30m
  pool_max_idle_per_host: 0
routes:
  public: [\"/login\", \"/static/\", \"/\"]
headers:
  xfcc: true
  underscores: reject
state:
  backend: embedded
  path: /var/lib/certgate/state.db
  redis:
    mode: cluster
    url: \"redis://127.0.0.1:6379/0\"
    urls: [\"redis://a:6379\", \"redis://b:6379\"]
    sentinel_master: \"\"
    password_file: \"\"
    key_prefix: \"gate:\"
  cache:
    ttl: 3s
    max_entries: 42
  on_error: serve_stale
  max_stale: 1m
enrollment:
  enabled: true
  ca_cert: certs/enroll-ca.pem
  ca_key: certs/enroll-ca.key
  validity: 30d
  ticket_ttl: 12h
  public_url: \"https://gate.example.com/\"
admin:
  listen: \"127.0.0.1:19444\"
  token_file: secrets/admin-token
metrics:
  listen: \"0.0.0.0:19090\"
limits:
  max_connections: 77
  handshake_timeout: 5s
  header_read_timeout: 6s
  max_header_bytes: 32KiB
  idle_timeout: 7s
  h2_max_concurrent_streams: 9
  max_connection_age: 1h
  send_timeout: 15s
  response_buffer: 64MiB
log:
  format: json
  level: \"certgate=debug,info\"
  access: true
";
    let c = pki.load(yaml).unwrap();
    assert_eq!(c.source, pki.config_path());
    assert_eq!(c.listen, "127.0.0.1:18443".parse().unwrap());
    assert_eq!(c.server_names, ["gate.example.com", "localhost"]);
    assert_eq!(c.tls.cert.certs.len(), 1);
    assert_eq!(c.tls.cert.path, pki.path("certs/server.pem"));
    assert_eq!(c.tls.min_version, TlsMinVersion::Tls13);
    assert!(!c.tls.session_resumption);
    assert_eq!(c.client_auth.mode, ClientAuthMode::Required);
    assert_eq!(c.client_auth.trusted_cas.len(), 1);
    assert_eq!(c.client_auth.crls.len(), 2);
    for crl in &c.client_auth.crls {
        let serials: Vec<&str> = crl.revoked.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(serials, ["8f01", "1234"]);
        let (_, ca) =
            X509Certificate::from_der(c.client_auth.trusted_cas[0].certs[0].as_ref()).unwrap();
        assert_eq!(crl.revoked[0].0, ca.subject().as_raw());
        assert!(crl.next_update.unwrap() > 0);
    }
    assert_eq!(
        c.identity.account_from,
        [AccountSource::SubjectCn, AccountSource::SanEmail]
    );
    assert_eq!(c.identity.uri_prefix, "urn:example:");
    assert_eq!(c.upstream.url.to_string(), "https://app.internal:9000/base");
    assert_eq!(c.upstream.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.upstream.response_timeout, Duration::from_secs(120));
    assert_eq!(c.upstream.pool_idle_timeout, Duration::from_secs(5400));
    assert_eq!(c.upstream.pool_max_idle_per_host, 0);
    assert_eq!(c.routes.public, ["/login", "/static", "/"]);
    assert!(c.headers.xfcc);
    assert_eq!(c.headers.underscores, Underscores::Reject);
    let StateBackend::Embedded { path } = &c.state.backend else {
        panic!("expected the embedded backend")
    };
    assert_eq!(path, Path::new("/var/lib/certgate/state.db"));
    assert_eq!(c.state.cache.ttl, Duration::from_secs(3));
    assert_eq!(c.state.cache.max_entries, 42);
    assert_eq!(c.state.on_error, OnError::ServeStale);
    assert_eq!(c.state.max_stale, Duration::from_secs(60));
    let e = c.enrollment.as_ref().unwrap();
    assert!(e.enabled);
    assert_eq!(e.validity, Duration::from_secs(30 * 86_400));
    assert_eq!(e.ticket_ttl, Duration::from_secs(12 * 3_600));
    assert_eq!(e.public_url, "https://gate.example.com");
    assert_eq!(c.admin.listen, "127.0.0.1:19444".parse().unwrap());
    assert_eq!(c.admin.token_file, pki.path("secrets/admin-token"));
    assert_eq!(c.metrics.listen, "0.0.0.0:19090".parse().unwrap());
    assert_eq!(c.limits.max_connections, 77);
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.header_read_timeout, Duration::from_secs(6));
    assert_eq!(c.limits.max_header_bytes, 32 * 1024);
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(7));
    assert_eq!(c.limits.h2_max_concurrent_streams, 9);
    assert_eq!(c.limits.max_connection_age, Some(Duration::from_secs(3600)));
    assert_eq!(c.limits.send_timeout, Duration::from_secs(15));
    assert_eq!(c.limits.response_buffer, 64 * 1024 * 1024);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "certgate=debug,info");
    assert!(c.log.access);

    // Debug output never carries key material.
    let debug = format!("{c:?}");
    assert!(!debug.contains("PRIVATE"), "{debug}");
    let key_der = c.tls.key.key.secret_der();
    assert!(!debug.contains(&format!("{:?}", &key_der[..8])), "{debug}");
}

#[test]
fn defaults_are_applied() {
    let pki = Pki::new();
    let c = pki.load(MINIMAL).unwrap();
    assert_eq!(c.listen, "0.0.0.0:8443".parse().unwrap());
    assert!(c.server_names.is_empty());
    assert_eq!(c.tls.min_version, TlsMinVersion::Tls12);
    assert!(c.tls.session_resumption);
    assert_eq!(c.client_auth.mode, ClientAuthMode::Optional);
    assert!(c.client_auth.trusted_cas.is_empty());
    assert!(c.client_auth.crls.is_empty());
    assert_eq!(
        c.identity.account_from,
        [
            AccountSource::SanUri,
            AccountSource::SanEmail,
            AccountSource::SubjectCn
        ]
    );
    assert_eq!(c.identity.uri_prefix, "urn:certgate:account:");
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.upstream.response_timeout, Duration::from_secs(60));
    assert_eq!(c.upstream.pool_idle_timeout, Duration::from_secs(90));
    assert_eq!(c.upstream.pool_max_idle_per_host, 512);
    assert!(c.routes.public.is_empty());
    assert!(!c.headers.xfcc);
    assert_eq!(
        c.headers.identity,
        crate::config::IdentityHeaderSet::default(),
        "every identity header on by default"
    );
    assert!(c.headers.identity.client_cert && c.headers.identity.account);
    assert_eq!(c.headers.underscores, Underscores::Drop);
    let StateBackend::Embedded { path } = &c.state.backend else {
        panic!("expected the embedded backend")
    };
    assert_eq!(path, &pki.path("data/certgate.db"));
    assert_eq!(c.state.cache.ttl, Duration::from_secs(10));
    assert_eq!(c.state.cache.max_entries, 100_000);
    assert_eq!(c.state.on_error, OnError::FailClosed);
    assert_eq!(c.state.max_stale, Duration::from_secs(300));
    let e = c.enrollment.as_ref().expect("enrollment is on by default");
    assert_eq!(e.ca_cert.path, pki.path("certs/enroll-ca.pem"));
    assert_eq!(e.ca_key.path, pki.path("certs/enroll-ca.key"));
    assert_eq!(e.validity, Duration::from_secs(365 * 86_400));
    assert_eq!(e.ticket_ttl, Duration::from_secs(86_400));
    assert_eq!(e.public_url, "https://localhost:8443");
    assert_eq!(c.admin.listen, "127.0.0.1:9444".parse().unwrap());
    assert_eq!(c.admin.token_file, pki.path("secrets/admin-token"));
    assert_eq!(c.metrics.listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.max_header_bytes, 64 * 1024);
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.h2_max_concurrent_streams, 256);
    assert_eq!(c.limits.send_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.response_buffer, 256 * 1024 * 1024);
    assert_eq!(c.limits.h2_control_frames_per_second, 1000);
    assert_eq!(c.limits.max_connection_age, None);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "info");
    assert!(!c.log.access);
}

#[test]
fn explicit_defaults_are_accepted() {
    let pki = Pki::new();
    let yaml = with(
        "listen_proxy_protocol: false\nstate:\n  backend: embedded\n  redis:\n    mode: standalone\nlimits:\n  max_connection_age: 0s\n",
    );
    let c = pki.load(&yaml).unwrap();
    assert_eq!(c.limits.max_connection_age, None);
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let pki = Pki::new();
    std::fs::create_dir_all(pki.path("config")).unwrap();
    let file = pki.path("config/certgate.yaml");
    let yaml = format!(
        "\
tls:
  cert: ../certs/server.pem
  key: {}
upstream:
  url: http://127.0.0.1:8080
client_auth:
  trusted_cas: [../certs/client-ca.pem]
state:
  path: ../data/certgate.db
enrollment:
  ca_cert: ../certs/enroll-ca.pem
  ca_key: ../certs/enroll-ca.key
admin:
  token_file: ../secrets/admin-token
",
        pki.path("certs/server.key").display()
    );
    std::fs::write(&file, &yaml).unwrap();
    let c = load(&file).unwrap();
    let config_dir = pki.path("config");
    assert_eq!(c.tls.cert.path, config_dir.join("../certs/server.pem"));
    assert_eq!(
        c.tls.key.path,
        pki.path("certs/server.key"),
        "absolute paths stay as written"
    );
    assert_eq!(
        c.client_auth.trusted_cas[0].path,
        config_dir.join("../certs/client-ca.pem")
    );
    let StateBackend::Embedded { path } = &c.state.backend else {
        panic!("expected the embedded backend")
    };
    assert_eq!(path, &config_dir.join("../data/certgate.db"));
    assert_eq!(
        c.admin.token_file,
        config_dir.join("../secrets/admin-token")
    );
    // The same text as a file one folder up finds nothing.
    let err = from_yaml(&yaml, &pki.config_path()).unwrap_err();
    assert_eq!(err.key, "tls.cert");
    assert!(err.message.contains("does not exist"), "{err}");
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let pki = Pki::new();
    let yaml = with("client_auth:\n  mode: optional\n  trsted: []\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "trsted")),
        "client_auth.trsted",
        &["unknown field `trsted`", "trusted_cas"],
    );

    let yaml = with("lisen: \"0.0.0.0:8443\"\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "lisen")),
        "lisen",
        &["unknown field `lisen`"],
    );

    // Inside a flow mapping the line names the parent; the key still names the field.
    let yaml = with("headers: {xfcc: true, xffc: true}\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "xffc")),
        "headers.xffc",
        &["unknown field `xffc`"],
    );

    // The redis keys are checked too, although the backend is off.
    let yaml = with("state:\n  redis:\n    host: x\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "host:")),
        "state.redis.host",
        &["unknown field `host`"],
    );
}

#[test]
fn duplicate_key_is_an_error() {
    let pki = Pki::new();
    let yaml = format!("listen: \"0.0.0.0:8443\"\n{MINIMAL}listen: \"0.0.0.0:9443\"\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "9443")),
        "listen",
        &[
            "`listen` is written twice here (first at line 1)",
            "keep one of them",
        ],
    );

    let yaml = "tls:\n  cert: certs/server.pem\n  cert: certs/server.pem\n";
    let err = pki.error(yaml);
    assert_error(
        &pki,
        &err,
        Some(3),
        "tls.cert",
        &["written twice", "line 2"],
    );
}

#[test]
fn underscores_policy_is_one_of_three_words() {
    let pki = Pki::new();
    let yaml = with("headers:\n  underscores: strip\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "underscores")),
        "headers.underscores",
        &["\"strip\" is not one of: drop, reject, allow"],
    );
}

#[test]
fn yes_no_booleans_are_errors() {
    let pki = Pki::new();
    for word in ["yes", "no", "on", "off", "True1"] {
        let yaml = with(&format!("headers:\n  xfcc: {word}\n"));
        let err = pki.error(&yaml);
        assert_error(
            &pki,
            &err,
            Some(line_of(&yaml, "xfcc")),
            "headers.xfcc",
            &["boolean", word],
        );
    }
}

#[test]
fn wrong_types_are_errors() {
    let pki = Pki::new();
    let yaml = with("limits:\n  max_connections: lots\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "lots")),
        "limits.max_connections",
        &["whole number", "lots"],
    );

    let yaml = with("limits:\n  max_connections: -5\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "-5")),
        "limits.max_connections",
        &["-5"],
    );

    let yaml = with("client_auth: 5\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "client_auth")),
        "client_auth",
        &["expected a section", "`5`"],
    );

    let yaml = with("routes:\n  public: /login\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "/login")),
        "routes.public",
        &["expected a list", "`[/login]`"],
    );

    let yaml = with("log:\n  format: [text]\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "[text]")),
        "log.format",
        &["string"],
    );

    let err = pki.error("- just\n- a list\n");
    assert_eq!(err.line, Some(1), "{err}");
}

#[test]
fn bad_durations_name_key_and_value() {
    let pki = Pki::new();
    let yaml = with("state:\n  cache:\n    ttl: 10x\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "10x")),
        "state.cache.ttl",
        &["\"10x\"", "unknown unit"],
    );

    let yaml = format!("{MINIMAL}  connect_timeout: 30\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "connect_timeout")),
        "upstream.connect_timeout",
        &["\"30\"", "unit"],
    );

    let yaml = format!("{MINIMAL}  response_timeout: 0s\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "response_timeout")),
        "upstream.response_timeout",
        &["\"0s\"", "greater than 0"],
    );

    let yaml = with("state:\n  cache:\n    ttl: 0ms\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "ttl")),
        "state.cache.ttl",
        &["greater than 0"],
    );
}

#[test]
fn bad_sizes_name_key_and_value() {
    let pki = Pki::new();
    let yaml = with("limits:\n  max_header_bytes: 64KB\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "64KB")),
        "limits.max_header_bytes",
        &["\"64KB\"", "64KiB"],
    );

    for bad in ["2MiB", "512B"] {
        let yaml = with(&format!("limits:\n  max_header_bytes: {bad}\n"));
        let err = pki.error(&yaml);
        assert_error(
            &pki,
            &err,
            Some(line_of(&yaml, bad)),
            "limits.max_header_bytes",
            &[bad, "between 1KiB and 1MiB"],
        );
    }
    let c = pki
        .load(&with("limits:\n  max_header_bytes: 8192\n"))
        .unwrap();
    assert_eq!(c.limits.max_header_bytes, 8192);
}

#[test]
fn out_of_range_numbers() {
    let pki = Pki::new();
    let yaml = with("limits:\n  h2_max_concurrent_streams: 0\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "h2_max")),
        "limits.h2_max_concurrent_streams",
        &["0 is out of range"],
    );

    let yaml = with("limits:\n  h2_control_frames_per_second: 2000000\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "h2_control")),
        "limits.h2_control_frames_per_second",
        &["2000000 is out of range"],
    );

    let yaml = with("state:\n  cache:\n    max_entries: 0\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "max_entries")),
        "state.cache.max_entries",
        &["0 is out of range"],
    );

    let yaml = with("limits:\n  max_connections: 0\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "max_connections")),
        "limits.max_connections",
        &["0 is out of range"],
    );

    let yaml = with("limits:\n  response_buffer: 64KiB\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "response_buffer")),
        "limits.response_buffer",
        &["out of range", "1MiB"],
    );
}

#[test]
fn missing_required_keys() {
    let pki = Pki::new();
    let yaml = "tls:\n  key: certs/server.key\nupstream:\n  url: http://127.0.0.1:8080\n";
    let err = pki.error(yaml);
    assert_error(&pki, &err, Some(1), "tls.cert", &["required"]);

    let err = pki.error("upstream:\n  url: http://127.0.0.1:8080\n");
    assert_error(&pki, &err, None, "tls.cert", &["required"]);

    let err = pki.error("");
    assert_error(&pki, &err, None, "tls.cert", &["required"]);

    let err = pki.error("tls:\n  cert: certs/server.pem\n  key: certs/server.key\n");
    assert_error(&pki, &err, None, "upstream.url", &["required"]);

    let yaml =
        "tls:\n  cert: certs/nope.pem\n  key: certs/server.key\nupstream:\n  url: http://x\n";
    let err = pki.error(yaml);
    assert_error(
        &pki,
        &err,
        Some(2),
        "tls.cert",
        &["nope.pem", "does not exist"],
    );
}

#[test]
fn cert_and_key_must_match() {
    let pki = Pki::new();
    let yaml = MINIMAL.replace("certs/server.key", "certs/other.key");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "other.key")),
        "tls.key",
        &["does not match", "server.pem"],
    );

    // A certificate file where a key is expected.
    let yaml = MINIMAL.replace("certs/server.key", "certs/client-ca.pem");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "key:")),
        "tls.key",
        &["no usable private key"],
    );

    let yaml = MINIMAL.replace("certs/server.pem", "certs/empty.pem");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "empty.pem")),
        "tls.cert",
        &["holds no certificate"],
    );
}

#[test]
fn ca_file_without_certificate() {
    let pki = Pki::new();
    let yaml =
        with("client_auth:\n  trusted_cas:\n    - certs/client-ca.pem\n    - certs/empty.pem\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "empty.pem")),
        "client_auth.trusted_cas[1]",
        &["empty.pem", "holds no certificate"],
    );

    let yaml = with("client_auth:\n  trusted_cas: [certs/missing-ca.pem]\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "missing-ca")),
        "client_auth.trusted_cas[0]",
        &["missing-ca.pem", "does not exist"],
    );
}

#[test]
fn expired_crl_is_an_error() {
    let pki = Pki::new();
    let yaml = with(
        "client_auth:\n  trusted_cas: [certs/client-ca.pem]\n  crls:\n    - certs/client-ca.crl.pem\n    - certs/expired.crl.pem\n",
    );
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "expired.crl")),
        "client_auth.crls[1]",
        &["expired.crl.pem", "expired at"],
    );
}

#[test]
fn unparsable_crl_is_an_error() {
    let pki = Pki::new();
    let yaml =
        with("client_auth:\n  trusted_cas: [certs/client-ca.pem]\n  crls: [certs/garbage.crl]\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "garbage")),
        "client_auth.crls[0]",
        &["garbage.crl", "not a valid CRL"],
    );

    // A PEM file of another kind is not a CRL either.
    let yaml = with("client_auth:\n  crls:\n    - certs/client-ca.pem\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "- certs/client-ca.pem")),
        "client_auth.crls[0]",
        &["no PEM CRL"],
    );
}

#[test]
fn crl_with_a_forged_signature_is_an_error() {
    let pki = Pki::new();
    // A CRL naming the client CA as issuer, signed by another key.
    let params = ca_params("Test Client CA");
    let key = KeyPair::generate().unwrap();
    let forged = crl_pem(&Issuer::new(params, &key), 3, &[&[0x01]]);
    std::fs::write(pki.path("certs/forged.crl.pem"), forged).unwrap();
    let yaml = with(
        "client_auth:\n  trusted_cas: [certs/client-ca.pem]\n  crls: [certs/forged.crl.pem]\n",
    );
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "forged")),
        "client_auth.crls[0]",
        &["signature does not verify", "CN=Test Client CA"],
    );
}

#[test]
fn listeners_must_not_clash() {
    let pki = Pki::new();
    let yaml = with("admin:\n  listen: \"0.0.0.0:8443\"\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "0.0.0.0:8443")),
        "admin.listen",
        &["clashes with listen"],
    );

    // A wildcard address overlaps a specific one on the same port.
    let yaml = with("listen: \"0.0.0.0:9090\"\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "9090")),
        "listen",
        &["0.0.0.0:9090 clashes with metrics.listen (127.0.0.1:9090)"],
    );

    let yaml = with("metrics:\n  listen: \"127.0.0.1:9444\"\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "9444")),
        "metrics.listen",
        &["clashes with admin.listen"],
    );

    // Port 0 never clashes; different IPs on the same port do not either.
    pki.load(&with("listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\nmetrics:\n  listen: \"127.0.0.1:0\"\n"))
        .unwrap();
    pki.load(&with(
        "admin:\n  listen: \"127.0.0.1:9090\"\nmetrics:\n  listen: \"127.0.0.2:9090\"\n",
    ))
    .unwrap();
}

#[test]
fn bad_addresses_name_the_value() {
    let pki = Pki::new();
    let yaml = with("listen: \"0.0.0.0:99999\"\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "99999")),
        "listen",
        &["\"0.0.0.0:99999\" is not a valid address"],
    );

    let yaml = with("metrics:\n  listen: localhost:9090\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "localhost:9090")),
        "metrics.listen",
        &["\"localhost:9090\""],
    );
}

#[test]
fn not_yet_built_features_are_refused() {
    let pki = Pki::new();
    let yaml = with("state:\n  backend: memory\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "memory")),
        "state.backend",
        &["\"memory\" is not one of: embedded, redis"],
    );

    let yaml = with("state:\n  redis:\n    mode: replicated\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "replicated")),
        "state.redis.mode",
        &["\"replicated\""],
    );
}

#[test]
fn a_config_without_trust_anchor_is_an_error() {
    let pki = Pki::new();
    let yaml = with("enrollment:\n  enabled: false\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        None,
        "client_auth.trusted_cas",
        &["no client trust anchor"],
    );

    let yaml = with("client_auth:\n  trusted_cas: []\nenrollment:\n  enabled: false\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "trusted_cas")),
        "client_auth.trusted_cas",
        &["no client trust anchor"],
    );

    // Either anchor is enough.
    let c = pki
        .load(&with(
            "client_auth:\n  trusted_cas: [certs/client-ca.pem]\nenrollment:\n  enabled: false\n",
        ))
        .unwrap();
    assert!(c.enrollment.is_none());
}

#[test]
fn enrollment_ca_problems() {
    let pki = Pki::new();
    let yaml = with("enrollment:\n  ca_cert: certs/absent-ca.pem\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "absent-ca")),
        "enrollment.ca_cert",
        &[
            "does not exist",
            "certgate init",
            "enrollment.enabled: false",
        ],
    );

    let yaml = with("enrollment:\n  ca_cert: certs/server.pem\n  ca_key: certs/server.key\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "ca_cert")),
        "enrollment.ca_cert",
        &["is not a CA certificate"],
    );

    let yaml = with("enrollment:\n  public_url: \"ftp://gate.example.com\"\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "ftp")),
        "enrollment.public_url",
        &["\"ftp://gate.example.com\"", "http or https"],
    );

    // Missing at the default path: the key has no line in the file.
    std::fs::remove_file(pki.path("certs/enroll-ca.key")).unwrap();
    let err = pki.error(MINIMAL);
    assert_error(
        &pki,
        &err,
        None,
        "enrollment.ca_key",
        &["enroll-ca.key", "certgate init"],
    );
}

#[test]
fn admin_token_file_must_exist_and_hold_a_token() {
    let pki = Pki::new();
    std::fs::write(pki.path("secrets/admin-token"), "  \n").unwrap();
    let err = pki.error(MINIMAL);
    assert_error(
        &pki,
        &err,
        None,
        "admin.token_file",
        &["is empty", "certgate init"],
    );
    assert!(!err.message.contains("s3cret"));

    let yaml = with("admin:\n  token_file: secrets/none\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "secrets/none")),
        "admin.token_file",
        &["does not exist", "openssl rand"],
    );
}

#[test]
fn bad_upstream_urls() {
    let pki = Pki::new();
    for (url, words) in [
        (
            "ftp://127.0.0.1/",
            &["\"ftp://127.0.0.1/\"", "http or https"][..],
        ),
        ("127.0.0.1:8080", &["\"127.0.0.1:8080\"", "http"][..]),
        ("/just/a/path", &["http:// or https://"][..]),
        ("http://user:pw@app:80", &["credentials"][..]),
        ("http://app:80/?x=1", &["query"][..]),
        ("http://exa mple", &["\"http://exa mple\""][..]),
    ] {
        let yaml = MINIMAL.replace("\"http://127.0.0.1:8080\"", &format!("{url:?}"));
        let err = pki.error(&yaml);
        assert_error(
            &pki,
            &err,
            Some(line_of(&yaml, "url:")),
            "upstream.url",
            words,
        );
    }
}

#[test]
fn bad_public_routes() {
    let pki = Pki::new();
    for (route, why) in [
        ("login", "must start with '/'"),
        ("/a/../b", "'..'"),
        ("/a%2fb", "'%'"),
        ("/a\\\\b", "'\\'"),
        ("/search?q", "'?'"),
        ("/page#top", "'#'"),
        ("/a//b", "empty or '.' segments"),
        ("/.certgate", "reserved"),
        ("/.certgate/enroll/", "reserved"),
    ] {
        let yaml = with(&format!(
            "routes:\n  public:\n    - \"/ok\"\n    - \"{route}\"\n"
        ));
        let err = pki.error(&yaml);
        assert_error(
            &pki,
            &err,
            Some(line_of(&yaml, &format!("\"{route}\""))),
            "routes.public[1]",
            &[why],
        );
    }
    // Look-alikes of the reserved prefix are fine; trailing slashes are dropped.
    let c = pki
        .load(&with(
            "routes:\n  public: [\"/.certgates\", \"/static//\", \"/\", \"/static\"]\n",
        ))
        .unwrap();
    assert_eq!(c.routes.public, ["/.certgates", "/static", "/"]);
}

#[test]
fn server_names_are_host_names() {
    let pki = Pki::new();
    let c = pki
        .load(&with(
            "server_names: [\"Gate.Example.com.\", gate.example.com]\n",
        ))
        .unwrap();
    assert_eq!(c.server_names, ["gate.example.com"]);

    let yaml = with("server_names:\n  - gate.example.com:8443\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "8443")),
        "server_names[0]",
        &["without a port"],
    );

    for (name, why) in [
        ("127.0.0.1", "IP address"),
        ("*.example.com", "wildcards"),
        ("a/b", "only hold"),
    ] {
        let yaml = with(&format!(
            "server_names:\n  - ok.example.com\n  - \"{name}\"\n"
        ));
        let err = pki.error(&yaml);
        assert_error(
            &pki,
            &err,
            Some(line_of(&yaml, &format!("\"{name}\""))),
            "server_names[1]",
            &[why],
        );
    }

    let yaml = with("server_names: [\"\"]\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "server_names")),
        "server_names[0]",
        &["must not be empty"],
    );
}

#[test]
fn choice_keys_list_the_options() {
    let pki = Pki::new();
    let cases = [
        (
            "client_auth:\n  mode: sometimes\n",
            "client_auth.mode",
            "\"sometimes\" is not one of: optional, required",
        ),
        (
            "tls:\n  min_version: \"1.1\"\n",
            "tls.min_version",
            "\"1.1\" is not one of: 1.2, 1.3",
        ),
        (
            "identity:\n  account_from: [san_uri, serial]\n",
            "identity.account_from[1]",
            "\"serial\" is not one of",
        ),
        (
            "state:\n  on_error: fail_open\n",
            "state.on_error",
            "\"fail_open\"",
        ),
        (
            "log:\n  format: xml\n",
            "log.format",
            "\"xml\" is not one of: text, json",
        ),
    ];
    for (extra, key, words) in cases {
        // `tls:` must not be written twice: merge the extra tls key into MINIMAL.
        let yaml = if let Some(rest) = extra.strip_prefix("tls:\n") {
            MINIMAL.replace("tls:\n", &format!("tls:\n{rest}"))
        } else {
            with(extra)
        };
        let err = pki.error(&yaml);
        let needle = key.rsplit('.').next().unwrap().split('[').next().unwrap();
        assert_error(
            &pki,
            &err,
            Some(line_of(&yaml, &format!("{needle}:"))),
            key,
            &[words],
        );
    }

    let yaml = with("identity:\n  account_from: []\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "account_from")),
        "identity.account_from",
        &["at least one"],
    );

    let yaml = with("log:\n  level: \"certgate=[[\"\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "level")),
        "log.level",
        &["not a valid log filter"],
    );
}

#[test]
fn load_reads_the_file_and_names_it() {
    let pki = Pki::new();
    std::fs::write(pki.config_path(), MINIMAL).unwrap();
    let c = load(&pki.config_path()).unwrap();
    assert_eq!(c.source, pki.config_path());
    let c = Config::load(&pki.config_path()).unwrap();
    assert_eq!(c.listen.port(), 8443);

    let missing = pki.path("nope.yaml");
    let err = load(&missing).unwrap_err();
    assert_eq!(err.file, missing);
    assert_eq!(err.key, "(file)");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: no such config file", missing.display())),
        "{err}"
    );
    for hint in ["--config", "CERTGATE_CONFIG", "certgate init"] {
        assert!(err.message.contains(hint), "{hint} missing from {err}");
    }
}

#[test]
fn key_index_recovers_paths() {
    let text = "\
# comment
listen: x   # trailing: comment
tls:
  cert: a
  key: \"b # not a comment\"
client_auth:
  trusted_cas:
  - one
  - two
  crls:
    - three
state:
  redis:
    urls: [a, b]
  cache:
    ttl: 1s
";
    let idx = KeyIndex::new(text);
    assert_eq!(idx.path_at(1), None);
    assert_eq!(idx.path_at(2).as_deref(), Some("listen"));
    assert_eq!(idx.path_at(4).as_deref(), Some("tls.cert"));
    assert_eq!(idx.path_at(5).as_deref(), Some("tls.key"));
    assert_eq!(
        idx.path_at(8).as_deref(),
        Some("client_auth.trusted_cas[0]")
    );
    assert_eq!(
        idx.path_at(9).as_deref(),
        Some("client_auth.trusted_cas[1]")
    );
    assert_eq!(idx.path_at(11).as_deref(), Some("client_auth.crls[0]"));
    assert_eq!(idx.path_at(14).as_deref(), Some("state.redis.urls"));
    assert_eq!(idx.path_at(16).as_deref(), Some("state.cache.ttl"));
    assert_eq!(idx.line_of("state.cache.ttl"), Some(16));
    assert_eq!(idx.line_of("state.cache.max_entries"), Some(15));
    assert_eq!(idx.line_of("client_auth.crls[0]"), Some(10));
    assert_eq!(idx.line_of("log.level"), None);
    assert_eq!(strip_comment("a: \"x # y\" # z"), "a: \"x # y\" ");
}

#[test]
fn the_example_config_is_valid() {
    // config/certgate.yaml documents every key; it must parse (file checks aside).
    let text = include_str!("../../../config/certgate.yaml");
    let options = serde_saphyr::options! { strict_booleans: true };
    let file: FileConfig = serde_saphyr::from_str_with_options(text, options).unwrap();
    assert!(file.tls.is_some() && file.upstream.is_some());

    // And with its files in place it validates, with the documented defaults.
    let pki = Pki::new();
    let config_dir = pki.path("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let file = config_dir.join("certgate.yaml");
    std::fs::write(&file, text).unwrap();
    let c = load(&file).unwrap();
    assert_eq!(c.listen, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(c.tls.cert.path, config_dir.join("../certs/server.pem"));
    assert!(c.enrollment.is_some());
}

#[test]
fn redis_backend_standalone() {
    let pki = Pki::new();
    let yaml = with("state:\n  backend: redis\n");
    let c = pki.load(&yaml).unwrap();
    let StateBackend::Redis(r) = &c.state.backend else {
        panic!("expected the redis backend")
    };
    assert_eq!(r.mode, RedisMode::Standalone);
    assert_eq!(r.url, "redis://127.0.0.1:6379/0");
    assert_eq!(r.key_prefix, "certgate:");
    assert!(r.password.is_none());

    std::fs::write(pki.path("secrets/redis-password"), "  hunter2-secret\n").unwrap();
    let yaml = with(
        "state:\n  backend: redis\n  redis:\n    url: \"rediss://cache.internal:6380/2\"\n    \
         password_file: secrets/redis-password\n    key_prefix: \"gw1:\"\n",
    );
    let c = pki.load(&yaml).unwrap();
    let StateBackend::Redis(r) = &c.state.backend else {
        panic!("expected the redis backend")
    };
    assert_eq!(r.url, "rediss://cache.internal:6380/2");
    assert_eq!(
        r.password.as_ref().map(|p| p.expose()),
        Some("hunter2-secret")
    );
    assert_eq!(r.key_prefix, "gw1:");
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("hunter2"),
        "Debug leaks the password: {shown}"
    );
}

#[test]
fn redis_url_password_is_never_shown() {
    let pki = Pki::new();
    let yaml =
        with("state:\n  backend: redis\n  redis:\n    url: \"redis://:topsecret@db:6379/0\"\n");
    let c = pki.load(&yaml).unwrap();
    let StateBackend::Redis(r) = &c.state.backend else {
        panic!("expected the redis backend")
    };
    assert!(!format!("{r:?}").contains("topsecret"));
    assert!(!r.describe().contains("topsecret"));
    assert!(r.describe().contains("db:6379"), "{}", r.describe());

    // And a password in two places is refused.
    std::fs::write(pki.path("secrets/redis-password"), "other\n").unwrap();
    let yaml = with(
        "state:\n  backend: redis\n  redis:\n    url: \"redis://:topsecret@db:6379/0\"\n    \
         password_file: secrets/redis-password\n",
    );
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "password_file")),
        "state.redis.password_file",
        &["one place"],
    );
    assert!(!err.to_string().contains("topsecret"));
}

#[test]
fn redis_sentinel_and_cluster() {
    let pki = Pki::new();
    let yaml = with(
        "state:\n  backend: redis\n  redis:\n    mode: sentinel\n    urls: [\"redis://10.0.0.1:26379\", \"redis://10.0.0.2:26379\"]\n    sentinel_master: mymaster\n",
    );
    let c = pki.load(&yaml).unwrap();
    let StateBackend::Redis(r) = &c.state.backend else {
        panic!("expected the redis backend")
    };
    assert_eq!(r.mode, RedisMode::Sentinel);
    assert_eq!(r.urls.len(), 2);
    assert_eq!(r.sentinel_master, "mymaster");

    let yaml = with(
        "state:\n  backend: redis\n  redis:\n    mode: cluster\n    urls: [\"redis://10.0.0.1:6379\"]\n",
    );
    let c = pki.load(&yaml).unwrap();
    assert!(matches!(&c.state.backend, StateBackend::Redis(r) if r.mode == RedisMode::Cluster));

    // The example's default url may stay in the file when the mode changes.
    let yaml = with(
        "state:\n  backend: redis\n  redis:\n    mode: cluster\n    url: \"redis://127.0.0.1:6379/0\"\n    urls: [\"redis://10.0.0.1:6379\"]\n",
    );
    pki.load(&yaml).unwrap();
}

#[test]
fn redis_mode_needs_its_keys() {
    let pki = Pki::new();
    let yaml = with(
        "state:\n  backend: redis\n  redis:\n    mode: sentinel\n    urls: [\"redis://10.0.0.1:26379\"]\n",
    );
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "redis:")),
        "state.redis.sentinel_master",
        &["master's name"],
    );

    let yaml = with(
        "state:\n  backend: redis\n  redis:\n    mode: sentinel\n    sentinel_master: mymaster\n",
    );
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "redis:")),
        "state.redis.urls",
        &["at least one address"],
    );

    let yaml = with("state:\n  backend: redis\n  redis:\n    mode: cluster\n    urls: []\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "urls")),
        "state.redis.urls",
        &["mode cluster needs at least one address"],
    );

    let yaml = with("state:\n  backend: redis\n  redis:\n    urls: [\"redis://a:6379\"]\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "urls")),
        "state.redis.urls",
        &["mode sentinel or cluster"],
    );

    let yaml = with(
        "state:\n  backend: redis\n  redis:\n    mode: cluster\n    url: \"redis://db:6379/0\"\n    urls: [\"redis://a:6379\"]\n",
    );
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "redis://db")),
        "state.redis.url",
        &["only with mode standalone"],
    );

    let yaml = with("state:\n  backend: redis\n  redis:\n    sentinel_master: mymaster\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "sentinel_master")),
        "state.redis.sentinel_master",
        &["only with mode sentinel"],
    );
}

#[test]
fn redis_tls_ca_file() {
    let pki = Pki::new();
    let yaml = with(
        "state:\n  backend: redis\n  redis:\n    url: \"rediss://cache.internal:6380/0\"\n    \
         tls_ca_file: certs/client-ca.pem\n",
    );
    let c = pki.load(&yaml).unwrap();
    let StateBackend::Redis(r) = &c.state.backend else {
        panic!("expected the redis backend")
    };
    let ca = r.tls_ca.as_ref().expect("tls_ca");
    assert_eq!(ca.path, pki.path("certs/client-ca.pem"));
    assert_eq!(ca.certs.len(), 1);

    // Not set: the system roots.
    let yaml = with("state:\n  backend: redis\n  redis:\n    url: \"rediss://cache:6380/0\"\n");
    let c = pki.load(&yaml).unwrap();
    let StateBackend::Redis(r) = &c.state.backend else {
        panic!("expected the redis backend")
    };
    assert!(r.tls_ca.is_none());

    // Without TLS it would be silently unused.
    let yaml = with(
        "state:\n  backend: redis\n  redis:\n    url: \"redis://cache:6379/0\"\n    \
         tls_ca_file: certs/client-ca.pem\n",
    );
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "tls_ca_file")),
        "state.redis.tls_ca_file",
        &["rediss://"],
    );

    // Missing, or not a certificate.
    let yaml = with(
        "state:\n  backend: redis\n  redis:\n    url: \"rediss://cache:6380/0\"\n    \
         tls_ca_file: certs/nope.pem\n",
    );
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "tls_ca_file")),
        "state.redis.tls_ca_file",
        &["does not exist"],
    );
    std::fs::write(pki.path("certs/not-a-cert.pem"), "hello\n").unwrap();
    let yaml = with(
        "state:\n  backend: redis\n  redis:\n    mode: cluster\n    \
         urls: [\"rediss://a:6380\"]\n    tls_ca_file: certs/not-a-cert.pem\n",
    );
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "tls_ca_file")),
        "state.redis.tls_ca_file",
        &["no certificate"],
    );
}

#[test]
fn bad_redis_values_name_key_and_line() {
    let pki = Pki::new();
    let yaml = with("state:\n  backend: redis\n  redis:\n    url: \"http://db:6379\"\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "http://db")),
        "state.redis.url",
        &["redis:// or rediss://"],
    );

    let yaml = with(
        "state:\n  backend: redis\n  redis:\n    mode: cluster\n    urls:\n      - \"redis://a:6379\"\n      - \"tcp://b:6379\"\n",
    );
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "tcp://b")),
        "state.redis.urls[1]",
        &["\"tcp://b:6379\""],
    );

    let yaml = with("state:\n  backend: redis\n  redis:\n    password_file: secrets/nope\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "password_file")),
        "state.redis.password_file",
        &["does not exist"],
    );

    std::fs::write(pki.path("secrets/empty"), "\n").unwrap();
    let yaml = with("state:\n  backend: redis\n  redis:\n    password_file: secrets/empty\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "password_file")),
        "state.redis.password_file",
        &["is empty"],
    );

    let yaml = with("state:\n  backend: redis\n  redis:\n    key_prefix: \"{gw}:\"\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "key_prefix")),
        "state.redis.key_prefix",
        &["never a cluster hash tag"],
    );

    // With another backend the redis keys are type-checked only.
    let yaml = with("state:\n  redis:\n    url: \"http://unused\"\n");
    pki.load(&yaml).unwrap();
}

#[test]
fn proxy_protocol_can_be_switched_on() {
    let pki = Pki::new();
    let cfg = pki.load(&with("")).expect("defaults");
    assert!(!cfg.listen_proxy_protocol, "off by default");
    let cfg = pki
        .load(&with("listen_proxy_protocol: true\n"))
        .expect("on");
    assert!(cfg.listen_proxy_protocol);
}

#[cfg(unix)]
#[test]
fn world_readable_enrollment_key_is_an_error() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let key = pki.path("certs/enroll-ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let yaml = with("enrollment:\n  ca_key: certs/enroll-ca.key\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "ca_key")),
        "enrollment.ca_key",
        &["chmod 600"],
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    pki.load(&yaml).expect("0600 is fine");
}

/// A config naming a device, a FIFO or a folder gets a clear error at once, never a hang
/// or a read without end; so does an oversized file.
#[cfg(unix)]
#[test]
fn only_regular_files_are_read() {
    let pki = Pki::new();
    let fifo = pki.path("certs/fifo.pem");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    std::fs::write(
        pki.path("certs/huge.crl"),
        vec![b'A'; (crate::config::read::MAX_FILE_BYTES + 1) as usize],
    )
    .unwrap();
    for (yaml, key, words) in [
        (
            MINIMAL.replace("certs/server.pem", "/dev/zero"),
            "tls.cert",
            &["/dev/zero", "not a regular file"][..],
        ),
        (
            MINIMAL.replace("certs/server.key", "certs/fifo.pem"),
            "tls.key",
            &["fifo.pem", "not a regular file"][..],
        ),
        (
            MINIMAL.replace("certs/server.pem", "certs"),
            "tls.cert",
            &["not a regular file"][..],
        ),
        (
            with("client_auth:\n  crls: [certs/huge.crl]\n"),
            "client_auth.crls[0]",
            &["larger than"][..],
        ),
    ] {
        let err = pki.error(&yaml);
        assert_eq!(err.key, key, "{err}");
        for w in words {
            assert!(err.message.contains(w), "{w:?} missing from: {err}");
        }
    }
}

#[test]
fn session_cookie_is_a_cookie_name() {
    let pki = Pki::new();
    let yaml = with("identity:\n  session_cookie: \"my session\"\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "session_cookie")),
        "identity.session_cookie",
        &["is not a cookie name", "e.g. \"sessionid\""],
    );
    let yaml = with("identity:\n  session_cookie: sessionid\n  session_cookie_ttl: 0s\n");
    let err = pki.error(&yaml);
    assert_eq!(err.key, "identity.session_cookie_ttl", "{err}");
}

#[test]
fn session_cookie_is_off_unless_named() {
    let pki = Pki::new();
    let c = pki.load(MINIMAL).unwrap();
    assert_eq!(c.identity.session_cookie, None);
    assert_eq!(
        c.identity.session_cookie_ttl,
        Duration::from_secs(7 * 86_400)
    );
    let c = pki
        .load(&with(
            "identity:\n  session_cookie: sid\n  session_cookie_ttl: 12h\n",
        ))
        .unwrap();
    assert_eq!(c.identity.session_cookie.as_deref(), Some("sid"));
    assert_eq!(
        c.identity.session_cookie_ttl,
        Duration::from_secs(12 * 3600)
    );
}

#[test]
fn the_key_table_is_what_the_parser_accepts() {
    use crate::config::schema::{FileConfig, KEYS};
    for (section, keys) in KEYS {
        // `zz_unknown` written inside `section`: the parser lists that section's keys.
        let mut yaml = String::new();
        let mut indent = String::new();
        for part in section.split('.').filter(|p| !p.is_empty()) {
            yaml.push_str(&format!("{indent}{part}:\n"));
            indent.push_str("  ");
        }
        yaml.push_str(&format!("{indent}zz_unknown: 1\n"));
        let err = serde_saphyr::from_str::<FileConfig>(&yaml).unwrap_err();
        let text = err.to_string();
        let listed = super::super::yaml::between(&format!("{text}\n"), "expected one of ", "\n")
            .unwrap_or_else(|| panic!("no key list in {text:?}"))
            .split(", ")
            .map(|k| k.trim().trim_matches('`').to_string())
            .collect::<Vec<_>>();
        let table: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        assert_eq!(listed, table, "section {section:?}");
    }
}

#[test]
fn misplaced_and_mistyped_keys_say_what_to_do() {
    let pki = Pki::new();
    // A key dedented out of its section into the top level, where it exists too.
    let yaml = with("metrics:\nlisten: \"127.0.0.1:9090\"\n");
    let err = pki.error(&with(&format!(
        "listen: \"127.0.0.1:8443\"\n{}",
        &yaml[MINIMAL.len()..]
    )));
    assert!(
        err.message.contains("written twice") && err.message.contains("indent it under `metrics:`"),
        "{err}"
    );
    assert!(!err.message.contains("duplicate mapping key"), "{err}");

    // A key dedented out of its section, not known where it landed.
    let yaml = "tls:\n  cert: certs/server.pem\nkey: certs/server.key\n";
    let err = pki.error(yaml);
    assert_error(
        &pki,
        &err,
        Some(3),
        "key",
        &["`key` is a key of `tls`", "indent it under `tls:` (line 1)"],
    );

    // Nested: a redis key one level too shallow.
    let yaml = with("state:\n  redis:\n    url: redis://x\n  mode: standalone\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "mode:")),
        "state.mode",
        &[
            "`mode` is a key of `state.redis`",
            "indent it under `redis:`",
        ],
    );

    // Typos.
    let yaml = with("limits:\n  idle_timout: 5s\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "idle_timout")),
        "limits.idle_timout",
        &["did you mean `idle_timeout`?"],
    );
    let err =
        pki.error("tls:\n  cert: certs/server.pem\n  key: certs/server.key\nupstrem:\n  url: x\n");
    assert_error(
        &pki,
        &err,
        Some(4),
        "upstrem",
        &["did you mean `upstream`?"],
    );

    // A string where a list belongs.
    let yaml = with("server_names: gate.example.com\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "server_names")),
        "server_names",
        &[
            "expected a list",
            "`[gate.example.com]`",
            "`- gate.example.com`",
        ],
    );
    assert!(!err.message.contains("sequence start"), "{err}");

    // A value where a section belongs.
    let err = pki.error("tls:\n  cert: certs/server.pem\n  key: certs/server.key\nupstream: \"http://127.0.0.1:8080\"\n");
    assert_error(&pki, &err, Some(4), "upstream", &["expected a section"]);
}

#[test]
fn a_public_url_that_cannot_work_is_warned_about() {
    let pki = Pki::new();
    let good = pki
        .load(&with(
            "enrollment:\n  public_url: \"https://localhost:8443\"\n",
        ))
        .unwrap();
    assert!(good.warnings().is_empty(), "{:?}", good.warnings());

    let cfg = pki
        .load(&with(
            "server_names: [localhost]\nenrollment:\n  public_url: \"http://gate.example.com\"\n",
        ))
        .unwrap();
    let w = cfg.warnings().join("\n");
    for words in [
        "serves HTTPS only",
        "has port 80 but listen is 0.0.0.0:8443",
        "not in server_names (localhost)",
        "not a name of the server certificate",
        "names: localhost",
    ] {
        assert!(w.contains(words), "{words:?} missing from:\n{w}");
    }

    // A port forward (443 → 8443) is a warning only, naming both ports.
    let cfg = pki
        .load(&with("enrollment:\n  public_url: \"https://localhost\"\n"))
        .unwrap();
    let w = cfg.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("port 443") && w[0].contains("8443"), "{w:?}");
}

#[test]
fn identity_headers_are_each_on_or_off() {
    let pki = Pki::new();
    let c = pki
        .load(&with(
            "headers:\n  identity:\n    client_cert: false\n    account: true\n",
        ))
        .unwrap();
    assert!(!c.headers.identity.client_cert);
    assert!(c.headers.identity.account && c.headers.identity.serial);
    let yaml = with("headers:\n  identity:\n    client_cert: off\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "client_cert")),
        "headers.identity.client_cert",
        &["boolean"],
    );
    let yaml = with("headers:\n  identity:\n    clientcert: false\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "clientcert")),
        "headers.identity.clientcert",
        &["did you mean `client_cert`?"],
    );
}

#[test]
fn shutdown_and_request_id_values() {
    let pki = Pki::new();
    let c = pki.load(MINIMAL).unwrap();
    assert_eq!(c.shutdown.drain_delay, Duration::from_secs(2));
    assert_eq!(c.shutdown.timeout, Duration::from_secs(30));
    assert_eq!(c.headers.request_id, RequestIdMode::Generate);

    let c = pki
        .load(&with(
            "shutdown:\n  drain_delay: 0s\n  timeout: 5s\nheaders:\n  request_id: accept\n",
        ))
        .unwrap();
    assert_eq!(
        c.shutdown.drain_delay,
        Duration::ZERO,
        "0s turns the lame duck off"
    );
    assert_eq!(c.shutdown.timeout, Duration::from_secs(5));
    assert_eq!(c.headers.request_id, RequestIdMode::Accept);

    let yaml = with("shutdown:\n  timeout: 0s\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "timeout")),
        "shutdown.timeout",
        &["0s"],
    );
    let yaml = with("shutdown:\n  drain_delay: soon\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "drain_delay")),
        "shutdown.drain_delay",
        &["soon"],
    );
    let yaml = with("shutdown:\n  drain_delay: -1s\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "drain_delay")),
        "shutdown.drain_delay",
        &["-1s"],
    );
    let yaml = with("headers:\n  request_id: trust\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "request_id")),
        "headers.request_id",
        &["\"trust\" is not one of: generate, accept, off"],
    );
}

#[test]
fn enrollment_server_side_keys() {
    let pki = Pki::new();
    let c = pki.load(MINIMAL).unwrap();
    assert!(
        c.enrollment.as_ref().unwrap().server_side_keys,
        "on by default: the page works without JavaScript"
    );
    let c = pki
        .load(&with("enrollment:\n  server_side_keys: false\n"))
        .unwrap();
    assert!(!c.enrollment.unwrap().server_side_keys);
    let yaml = with("enrollment:\n  server_side_keys: never\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "server_side_keys")),
        "enrollment.server_side_keys",
        &["never"],
    );
}

#[test]
fn telemetry_values() {
    let pki = Pki::new();
    let c = pki.load(MINIMAL).unwrap();
    assert_eq!(c.telemetry.otlp_endpoint, None, "off by default");
    assert_eq!(c.telemetry.service_name, "certgate");
    assert_eq!(c.telemetry.sample_ratio, 1.0);

    let c = pki
        .load(&with(
            "telemetry:\n  otlp_endpoint: http://collector:4318/\n  service_name: gate-eu\n  \
             sample_ratio: 0.25\n",
        ))
        .unwrap();
    assert_eq!(
        c.telemetry.otlp_endpoint.unwrap().to_string(),
        "http://collector:4318/v1/traces",
        "a collector's base address gets the traces path"
    );
    assert_eq!(c.telemetry.service_name, "gate-eu");
    assert_eq!(c.telemetry.sample_ratio, 0.25);
    let c = pki
        .load(&with(
            "telemetry:\n  otlp_endpoint: https://otel.example.com/custom/traces\n  sample_ratio: 0\n",
        ))
        .unwrap();
    assert_eq!(
        c.telemetry.otlp_endpoint.unwrap().to_string(),
        "https://otel.example.com/custom/traces",
        "a path is kept as written"
    );
    assert_eq!(c.telemetry.sample_ratio, 0.0);
    let c = pki
        .load(&with("telemetry:\n  otlp_endpoint: \"\"\n"))
        .unwrap();
    assert_eq!(c.telemetry.otlp_endpoint, None, "empty is off");

    for (yaml, key, needle) in [
        (
            "telemetry:\n  otlp_endpoint: grpc://collector:4317\n",
            "otlp_endpoint",
            "the scheme must be http or https",
        ),
        (
            "telemetry:\n  otlp_endpoint: collector:4318\n",
            "otlp_endpoint",
            "collector:4318",
        ),
        (
            "telemetry:\n  sample_ratio: 1.5\n",
            "sample_ratio",
            "from 0.0 (none) to 1.0",
        ),
        ("telemetry:\n  sample_ratio: -0.1\n", "sample_ratio", "-0.1"),
        (
            "telemetry:\n  service_name: \"  \"\n",
            "service_name",
            "not empty",
        ),
    ] {
        let yaml = with(yaml);
        let err = pki.error(&yaml);
        assert_error(
            &pki,
            &err,
            Some(line_of(&yaml, key)),
            &format!("telemetry.{key}"),
            &[needle],
        );
    }
    let yaml = with("telemetry:\n  sample_rate: 0.5\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "sample_rate")),
        "telemetry.sample_rate",
        &["did you mean `sample_ratio`?"],
    );
    let yaml = with("telemetry:\n  endpoint: http://collector:4318\n");
    let err = pki.error(&yaml);
    assert_error(
        &pki,
        &err,
        Some(line_of(&yaml, "endpoint")),
        "telemetry.endpoint",
        &["keys in `telemetry`: otlp_endpoint"],
    );
}

/// Lines of the shipped config dedented, duplicated, dropped and truncated at random
/// (seeded): every result is a config or an error naming a key, never a panic, and every
/// hint names a section that exists.
#[test]
fn mangled_configs_get_errors_not_panics() {
    let pki = Pki::new();
    let template = crate::demo::CONFIG_TEMPLATE;
    let lines: Vec<&str> = template.lines().collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for _ in 0..300 {
        let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        for _ in 0..3 {
            let i = next(out.len());
            match next(4) {
                0 => out[i] = out[i].trim_start().to_string(),
                1 => {
                    let l = out[i].clone();
                    out.insert(i, l);
                }
                2 => {
                    out.remove(i);
                }
                _ => {
                    let cut = next(out[i].len() + 1);
                    let cut = (0..=cut)
                        .rev()
                        .find(|c| out[i].is_char_boundary(*c))
                        .unwrap_or(0);
                    out[i].truncate(cut);
                }
            }
        }
        let text = out.join("\n");
        if let Err(e) = pki.load(&text) {
            assert!(!e.key.is_empty(), "{e}");
            if let Some(section) =
                super::super::yaml::between(&e.message, "indent it under `", ":`")
            {
                assert!(
                    crate::config::schema::KEYS
                        .iter()
                        .any(|(p, _)| p.rsplit('.').next() == Some(section)),
                    "hint names no section: {e}"
                );
            }
        }
    }
}
