//! `certgate.yaml` → [`FileConfig`] (`schema.rs`, parsed by `yaml.rs`) → validated
//! [`Config`]: the validators of every section, one `Ctx` method per section.
//!
//! The file structs mirror the YAML of DESIGN.md key for key: every struct denies unknown
//! fields, every key is optional (defaults are applied during validation), and scalar
//! values are spanned so a semantic error points at the line it comes from. Parsing uses
//! serde-saphyr with strict booleans (`yes`/`no`/`on`/`off` are errors) and its default
//! duplicate-key policy (a repeated key is an error).
//!
//! Why this file is over 800 lines: the section validators share one context (file, line
//! index, folder) and one set of error helpers; split by section they would each repeat
//! that context, and a reader checking one key would still open two files.
//!
//! Validation reads every file the config names (certificates, keys, CRLs, the admin
//! token) once, so the TLS module gets parsed material and never re-reads a file that may
//! have changed since it was checked. Nothing here binds a socket.
//!
//! Every [`ConfigError`] names the file, the line (when the key is written in the file) and
//! the dotted key; messages repeat the offending value, but never key material or tokens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::aws_lc_rs;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::schema::*;
use super::units;
use super::yaml::{KeyIndex, parse, span_line};
use super::{
    AdminConfig, AssertionConfig, CacheConfig, ClientAuthConfig, ClientAuthMode, Config,
    ConfigError, Crl, EnrollmentConfig, HeadersConfig, IdentityConfig, IdentityHeaderSet,
    LimitsConfig, LogConfig, LogFormat, MetricsConfig, OnError, PemCerts, RedisConfig, RedisMode,
    RequestIdMode, RoutesConfig, Secret, SecretKey, ShutdownConfig, StateBackend, StateConfig,
    TelemetryConfig, TlsConfig, TlsMinVersion, Underscores, UpstreamConfig,
};
use crate::core::identity::AccountSource;

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    use super::read::ReadError;
    let text = super::read::regular_text(path, super::read::MAX_CONFIG_BYTES).map_err(|e| {
        let message = match e {
            ReadError::NotFound(_) => format!(
                "no such config file ({}); name yours with --config PATH or \
                 CERTGATE_CONFIG, or write one with `certgate init` (config/certgate.yaml \
                 in the folder it is given)",
                std::path::absolute(path)
                    .unwrap_or_else(|_| path.to_path_buf())
                    .display()
            ),
            e => format!("cannot read the config file: {e}"),
        };
        ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: "(file)".into(),
            message,
        }
    })?;
    from_yaml(&text, path)
}

/// `CERTGATE_UPSTREAM_URL` and `CERTGATE_PUBLIC_URL`, when set and not empty, replace
/// `upstream.url` and `enrollment.public_url` of the file (one image, many deployments).
/// They are validated like the keys they replace.
fn with_env_overrides(mut f: FileConfig) -> FileConfig {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let spanned = |v: String| {
        serde_saphyr::Spanned::new(
            v,
            serde_saphyr::Location::UNKNOWN,
            serde_saphyr::Location::UNKNOWN,
        )
    };
    if let Some(url) = env("CERTGATE_UPSTREAM_URL") {
        f.upstream.get_or_insert_default().url = Some(spanned(url));
    }
    if let Some(url) = env("CERTGATE_PUBLIC_URL") {
        f.enrollment.get_or_insert_default().public_url = Some(spanned(url));
    }
    f
}

/// Parses and validates YAML `text` as if it were the file `path`: relative paths inside
/// are resolved against `path`'s folder, and errors name `path`.
pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let index = KeyIndex::new(text);
    let file = with_env_overrides(parse(text, path, &index)?);
    // Absolute, so a later change of working directory cannot move the files.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let ctx = Ctx {
        file: path,
        dir,
        index,
    };
    ctx.validate(file)
}

/// Validation context: the file being checked and where its keys are.
struct Ctx<'a> {
    file: &'a Path,
    /// Folder relative paths are resolved against.
    dir: PathBuf,
    index: KeyIndex,
}

/// A certificate file, parsed, with the key and line it came from (for later errors).
struct Loaded {
    certs: PemCerts,
    key: String,
    line: Option<usize>,
}

impl Ctx<'_> {
    /// An error at `key`; the line is `line` when known, else where `key` is written.
    fn fail(&self, key: &str, line: Option<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: line.or_else(|| self.index.line_of(key)),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn fail_at<T>(&self, key: &str, v: &S<T>, message: impl Into<String>) -> ConfigError {
        self.fail(key, span_line(v), message)
    }

    fn bool(&self, v: &Option<S<bool>>, default: bool) -> bool {
        v.as_ref().map_or(default, |v| v.value)
    }

    fn string<'v>(&self, v: &'v Option<S<String>>, default: &'v str) -> (&'v str, Option<usize>) {
        match v {
            Some(v) => (v.value.as_str(), span_line(v)),
            None => (default, None),
        }
    }

    fn choice<T: Copy>(
        &self,
        key: &str,
        v: &Option<S<String>>,
        default: T,
        options: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        options
            .iter()
            .find(|(name, _)| *name == v.value)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.fail_at(
                    key,
                    v,
                    format!("{:?} is not one of: {}", v.value, names.join(", ")),
                )
            })
    }

    fn duration(
        &self,
        key: &str,
        v: &Option<S<String>>,
        default_secs: u64,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(Duration::from_secs(default_secs)),
            Some(v) => {
                units::parse_duration(&v.value).map_err(|e| self.fail_at(key, v, e.to_string()))
            }
        }
    }

    /// A duration that must be greater than zero.
    fn positive_duration(
        &self,
        key: &str,
        v: &Option<S<String>>,
        default_secs: u64,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(key, v, default_secs)?;
        match v {
            Some(v) if d.is_zero() => {
                Err(self.fail_at(key, v, format!("{:?} must be greater than 0", v.value)))
            }
            _ => Ok(d),
        }
    }

    /// An integer within `min..=max`.
    fn number(
        &self,
        key: &str,
        v: &Option<S<u64>>,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        if v.value < min || v.value > max {
            let range = if max == u64::MAX {
                format!("at least {min}")
            } else {
                format!("between {min} and {max}")
            };
            return Err(self.fail_at(
                key,
                v,
                format!("{} is out of range (must be {range})", v.value),
            ));
        }
        Ok(v.value)
    }

    fn address(
        &self,
        key: &str,
        v: &Option<S<String>>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let (text, line) = self.string(v, default);
        text.trim().parse().map_err(|_| {
            self.fail(
                key,
                line,
                format!("{text:?} is not a valid address (ip:port, e.g. \"0.0.0.0:8443\")"),
            )
        })
    }

    /// A path, resolved against the config file's folder when relative.
    fn path(
        &self,
        key: &str,
        v: &Option<S<String>>,
        default: &str,
    ) -> Result<(PathBuf, Option<usize>), ConfigError> {
        let (text, line) = self.string(v, default);
        if text.trim().is_empty() {
            return Err(self.fail(key, line, "the path must not be empty"));
        }
        if v.is_none()
            && let Some(init) = self.init_layout(text)
        {
            return Ok((init, line));
        }
        Ok((self.dir.join(text), line))
    }

    /// A default key path (`certs/…`, `secrets/…`) that is missing next to the config file
    /// but present where `certgate init` writes it: the config in `DIR/config/`, the keys
    /// in `DIR/certs/` and `DIR/secrets/`.
    fn init_layout(&self, default: &str) -> Option<PathBuf> {
        if !(default.starts_with("certs/") || default.starts_with("secrets/")) {
            return None;
        }
        let here = self.dir.join(default);
        let init = self.dir.parent()?.join(default);
        (!here.exists() && init.exists()).then_some(init)
    }

    fn read(
        &self,
        key: &str,
        line: Option<usize>,
        path: &Path,
        missing_hint: &str,
    ) -> Result<Vec<u8>, ConfigError> {
        use super::read::{MAX_FILE_BYTES, ReadError, regular_file};
        regular_file(path, MAX_FILE_BYTES).map_err(|e| match e {
            ReadError::NotFound(_) => {
                // A default path: say where else it was looked for.
                let also = path
                    .strip_prefix(&self.dir)
                    .ok()
                    .filter(|rel| rel.starts_with("certs") || rel.starts_with("secrets"))
                    .and_then(|rel| Some(self.dir.parent()?.join(rel)))
                    .map(|p| {
                        format!(
                            " (nor {}, where `certgate init` writes it when the config is \
                             in its config/ folder)",
                            p.display()
                        )
                    })
                    .unwrap_or_default();
                self.fail(key, line, format!("{e}{also}{missing_hint}"))
            }
            other => self.fail(key, line, other.to_string()),
        })
    }

    /// A PEM file holding at least one certificate, every one of which parses.
    fn certs(
        &self,
        key: &str,
        line: Option<usize>,
        path: PathBuf,
        missing_hint: &str,
    ) -> Result<Loaded, ConfigError> {
        let bytes = self.read(key, line, &path, missing_hint)?;
        let mut certs = Vec::new();
        for (n, item) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
            let cert = item.map_err(|e| {
                self.fail(
                    key,
                    line,
                    format!(
                        "{}: certificate #{} is not valid PEM: {e}",
                        path.display(),
                        n + 1
                    ),
                )
            })?;
            if let Err(e) = X509Certificate::from_der(cert.as_ref()) {
                return Err(self.fail(
                    key,
                    line,
                    format!(
                        "{}: certificate #{} does not parse: {e}",
                        path.display(),
                        n + 1
                    ),
                ));
            }
            certs.push(cert);
        }
        if certs.is_empty() {
            return Err(self.fail(
                key,
                line,
                format!(
                    "{} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\")",
                    path.display()
                ),
            ));
        }
        Ok(Loaded {
            certs: PemCerts { path, certs },
            key: key.to_string(),
            line,
        })
    }

    /// A PEM private key (PKCS#8, PKCS#1 or SEC1) that matches the first certificate of
    /// `cert`. The key bytes never appear in an error.
    fn key_for(
        &self,
        key: &str,
        line: Option<usize>,
        path: PathBuf,
        cert: &Loaded,
        missing_hint: &str,
    ) -> Result<SecretKey, ConfigError> {
        let bytes = self.read(key, line, &path, missing_hint)?;
        let der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
            let why = match e {
                rustls_pki_types::pem::Error::NoItemsFound => "no private key found".to_string(),
                other => other.to_string(),
            };
            self.fail(
                key,
                line,
                format!(
                    "{} holds no usable private key ({why}; expected PEM PKCS#8, PKCS#1 or SEC1)",
                    path.display()
                ),
            )
        })?;
        let signing = aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(der.clone_key())
            .map_err(|e| {
                self.fail(
                    key,
                    line,
                    format!(
                        "{} holds a private key that cannot be used: {e}",
                        path.display()
                    ),
                )
            })?;
        let certified = CertifiedKey::new(cert.certs.certs.clone(), signing);
        match certified.keys_match() {
            // A key type that cannot tell its public key is not refused for that.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(self.fail(
                    key,
                    line,
                    format!(
                        "the private key in {} does not match the certificate in {} ({})",
                        path.display(),
                        cert.certs.path.display(),
                        cert.key
                    ),
                ));
            }
            Err(e) => {
                return Err(self.fail(
                    &cert.key,
                    cert.line,
                    format!(
                        "{}: cannot check the certificate against its key: {e}",
                        cert.certs.path.display()
                    ),
                ));
            }
        }
        Ok(SecretKey { path, key: der })
    }

    /// A PEM or DER CRL that parses and has not expired.
    fn crl(
        &self,
        key: &str,
        line: Option<usize>,
        path: PathBuf,
        now: i64,
    ) -> Result<Crl, ConfigError> {
        let bytes = self.read(key, line, &path, "")?;
        let der = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            CertificateRevocationListDer::from_pem_slice(&bytes).map_err(|e| {
                self.fail(
                    key,
                    line,
                    format!(
                        "{} holds no PEM CRL (\"-----BEGIN X509 CRL-----\"): {e}",
                        path.display()
                    ),
                )
            })?
        } else {
            CertificateRevocationListDer::from(bytes)
        };
        let (_, parsed) = CertificateRevocationList::from_der(der.as_ref()).map_err(|e| {
            self.fail(
                key,
                line,
                format!("{} is not a valid CRL (PEM or DER): {e}", path.display()),
            )
        })?;
        let next_update = parsed.next_update().map(|t| t.timestamp());
        if let Some(next) = next_update
            && next < now
        {
            return Err(self.fail(
                key,
                line,
                format!(
                    "the CRL in {} expired at {} (nextUpdate); install a fresh CRL from its CA",
                    path.display(),
                    crate::core::text::rfc3339(next)
                ),
            ));
        }
        let issuer = parsed.issuer().as_raw().to_vec();
        let revoked = parsed
            .iter_revoked_certificates()
            .map(|r| {
                (
                    issuer.clone(),
                    crate::core::text::serial_hex(r.raw_serial()),
                )
            })
            .collect();
        Ok(Crl {
            path,
            der,
            revoked,
            next_update,
        })
    }

    fn validate(&self, f: FileConfig) -> Result<Config, ConfigError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));

        // Listeners.
        let listen = self.address("listen", &f.listen, defaults::LISTEN)?;
        let listen_proxy_protocol = f.listen_proxy_protocol.as_ref().is_some_and(|v| v.value);
        let admin_file = f.admin.unwrap_or_default();
        let metrics_file = f.metrics.unwrap_or_default();
        let admin_listen =
            self.address("admin.listen", &admin_file.listen, defaults::ADMIN_LISTEN)?;
        let metrics_listen = self.address(
            "metrics.listen",
            &metrics_file.listen,
            defaults::METRICS_LISTEN,
        )?;
        let listeners = [
            ("listen", listen),
            ("admin.listen", admin_listen),
            ("metrics.listen", metrics_listen),
        ];
        for (i, (key_a, a)) in listeners.iter().enumerate() {
            for (key_b, b) in &listeners[i + 1..] {
                if clash(*a, *b) {
                    // Blame the one written in the file (the later one when both are).
                    let ((key, addr), (other_key, other)) = if self.index.line_of(key_b).is_some()
                        || self.index.line_of(key_a).is_none()
                    {
                        ((key_b, b), (key_a, a))
                    } else {
                        ((key_a, a), (key_b, b))
                    };
                    return Err(self.fail(
                        key,
                        None,
                        format!("{addr} clashes with {other_key} ({other}); each listener needs its own address and port"),
                    ));
                }
            }
        }

        let server_names = self.server_names(f.server_names.unwrap_or_default())?;
        let tls = self.tls(f.tls)?;
        let (client_auth, trusted) = self.client_auth(f.client_auth.unwrap_or_default(), now)?;
        let identity = self.identity(f.identity.unwrap_or_default())?;
        let upstream = self.upstream(f.upstream)?;
        let routes = self.routes(f.routes.unwrap_or_default())?;
        let headers_file = f.headers.unwrap_or_default();
        let id = headers_file.identity.unwrap_or_default();
        let headers = HeadersConfig {
            identity: IdentityHeaderSet {
                account: self.bool(&id.account, true),
                serial: self.bool(&id.serial, true),
                fingerprint: self.bool(&id.fingerprint, true),
                subject: self.bool(&id.subject, true),
                not_after: self.bool(&id.not_after, true),
                client_cert: self.bool(&id.client_cert, true),
            },
            xfcc: self.bool(&headers_file.xfcc, false),
            underscores: self.choice(
                "headers.underscores",
                &headers_file.underscores,
                Underscores::Drop,
                &[
                    ("drop", Underscores::Drop),
                    ("reject", Underscores::Reject),
                    ("allow", Underscores::Allow),
                ],
            )?,
            request_id: self.choice(
                "headers.request_id",
                &headers_file.request_id,
                RequestIdMode::Generate,
                &[
                    ("generate", RequestIdMode::Generate),
                    ("accept", RequestIdMode::Accept),
                    ("off", RequestIdMode::Off),
                ],
            )?,
            assertion: match &headers_file.assertion {
                None => None,
                Some(a) => self.assertion(a)?,
            },
        };
        let state = self.state(f.state.unwrap_or_default())?;
        let enrollment_file = f.enrollment.unwrap_or_default();
        let enrollment = self.enrollment(&enrollment_file)?;

        // Trust anchors: without any, no client certificate could ever be accepted, and
        // rustls refuses to build a client verifier.
        if trusted.is_empty() && enrollment.is_none() {
            return Err(self.fail(
                "client_auth.trusted_cas",
                None,
                "no client trust anchor: list at least one CA file in client_auth.trusted_cas, or turn enrollment on (enrollment.enabled: true)",
            ));
        }
        self.check_trust(&client_auth, &trusted, enrollment.as_ref())?;

        let (token_file, token_line) = self.path(
            "admin.token_file",
            &admin_file.token_file,
            defaults::TOKEN_FILE,
        )?;
        let hint = "; create it with `certgate init`, or with `openssl rand -hex 32 > FILE && chmod 600 FILE`";
        let token = self.read("admin.token_file", token_line, &token_file, hint)?;
        if token.trim_ascii().is_empty() {
            return Err(self.fail(
                "admin.token_file",
                token_line,
                format!(
                    "{} is empty; the admin API needs a token{hint}",
                    token_file.display()
                ),
            ));
        }

        let limits = self.limits(f.limits.unwrap_or_default())?;
        let shutdown = self.shutdown(f.shutdown.unwrap_or_default())?;
        let log = self.log(f.log.unwrap_or_default())?;
        let telemetry = self.telemetry(f.telemetry.unwrap_or_default())?;

        Ok(Config {
            source: self.file.to_path_buf(),
            listen,
            listen_proxy_protocol,
            server_names,
            tls,
            client_auth,
            identity,
            upstream,
            routes,
            headers,
            state,
            enrollment,
            admin: AdminConfig {
                listen: admin_listen,
                token_file,
            },
            metrics: MetricsConfig {
                listen: metrics_listen,
            },
            limits,
            shutdown,
            log,
            telemetry,
        })
    }

    fn telemetry(&self, t: TelemetryFile) -> Result<TelemetryConfig, ConfigError> {
        let mut out = TelemetryConfig::default();
        if let Some(v) = &t.otlp_endpoint
            && !v.value.trim().is_empty()
        {
            let url = http_url("telemetry.otlp_endpoint", &v.value)
                .map_err(|m| self.fail_at("telemetry.otlp_endpoint", v, m))?;
            // The collector's base address gets the traces path of OTLP/HTTP.
            let url = if matches!(url.path(), "" | "/") && url.query().is_none() {
                let base = v.value.trim().trim_end_matches('/');
                format!("{base}/v1/traces")
                    .parse()
                    .map_err(|e| self.fail_at("telemetry.otlp_endpoint", v, format!("{e}")))?
            } else {
                url
            };
            out.otlp_endpoint = Some(url);
        }
        if let Some(v) = &t.service_name {
            let name = v.value.trim();
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(self.fail_at(
                    "telemetry.service_name",
                    v,
                    "must be a name such as \"certgate\" (not empty, no control characters)",
                ));
            }
            out.service_name = name.to_string();
        }
        if let Some(v) = &t.sample_ratio {
            if !(0.0..=1.0).contains(&v.value) {
                return Err(self.fail_at(
                    "telemetry.sample_ratio",
                    v,
                    format!(
                        "{} is not a share of traces: write a number from 0.0 (none) to 1.0 \
                         (every one)",
                        v.value
                    ),
                ));
            }
            out.sample_ratio = v.value;
        }
        Ok(out)
    }

    fn shutdown(&self, s: ShutdownFile) -> Result<ShutdownConfig, ConfigError> {
        let mut out = ShutdownConfig::default();
        if s.drain_delay.is_some() {
            out.drain_delay = self.duration("shutdown.drain_delay", &s.drain_delay, 0)?;
        }
        out.timeout =
            self.positive_duration("shutdown.timeout", &s.timeout, defaults::SHUTDOWN_TIMEOUT)?;
        Ok(out)
    }

    fn server_names(&self, names: Vec<S<String>>) -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let key = format!("server_names[{i}]");
            let n = name.value.trim().trim_end_matches('.').to_ascii_lowercase();
            // Compared literally with the SNI, so a form that can never be sent as SNI
            // (a port, an IP address, a wildcard) would silently refuse every client.
            let why = if n.is_empty() {
                Some("a server name must not be empty")
            } else if n.contains(':') && n.parse::<std::net::IpAddr>().is_err() {
                Some("a server name is a host name without a port")
            } else if n.parse::<std::net::IpAddr>().is_ok() {
                Some("an IP address is never sent as SNI; list host names only")
            } else if n.contains('*') {
                Some("wildcards are not supported; list each host name")
            } else if !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            {
                Some("a server name may only hold letters, digits, '-', '_' and '.'")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(self.fail_at(&key, name, format!("{:?}: {why}", name.value)));
            }
            if !out.contains(&n) {
                out.push(n);
            }
        }
        Ok(out)
    }

    fn tls(&self, tls: Option<TlsFile>) -> Result<TlsConfig, ConfigError> {
        let tls = tls.unwrap_or_default();
        if tls.cert.is_none() {
            return Err(self.fail(
                "tls.cert",
                None,
                "this key is required: the server certificate chain (PEM, leaf first)",
            ));
        }
        if tls.key.is_none() {
            return Err(self.fail(
                "tls.key",
                None,
                "this key is required: the server private key (PEM)",
            ));
        }
        let (cert_path, cert_line) = self.path("tls.cert", &tls.cert, "")?;
        let cert = self.certs("tls.cert", cert_line, cert_path, "")?;
        let (key_path, key_line) = self.path("tls.key", &tls.key, "")?;
        let key = self.key_for("tls.key", key_line, key_path, &cert, "")?;
        let min_version = self.choice(
            "tls.min_version",
            &tls.min_version,
            TlsMinVersion::Tls12,
            &[("1.2", TlsMinVersion::Tls12), ("1.3", TlsMinVersion::Tls13)],
        )?;
        Ok(TlsConfig {
            cert: cert.certs,
            key,
            min_version,
            session_resumption: self.bool(&tls.session_resumption, true),
        })
    }

    fn client_auth(
        &self,
        ca: ClientAuthFile,
        now: i64,
    ) -> Result<(ClientAuthConfig, Vec<Loaded>), ConfigError> {
        let mode = self.choice(
            "client_auth.mode",
            &ca.mode,
            ClientAuthMode::Optional,
            &[
                ("optional", ClientAuthMode::Optional),
                ("required", ClientAuthMode::Required),
            ],
        )?;
        let mut trusted = Vec::new();
        for (i, v) in ca.trusted_cas.unwrap_or_default().into_iter().enumerate() {
            let key = format!("client_auth.trusted_cas[{i}]");
            let (path, line) = self.path(&key, &Some(v), "")?;
            trusted.push(self.certs(&key, line, path, "")?);
        }
        let mut crls = Vec::new();
        for (i, v) in ca.crls.unwrap_or_default().into_iter().enumerate() {
            let key = format!("client_auth.crls[{i}]");
            let (path, line) = self.path(&key, &Some(v), "")?;
            crls.push(self.crl(&key, line, path, now)?);
        }
        let config = ClientAuthConfig {
            mode,
            trusted_cas: trusted.iter().map(|l| l.certs.clone()).collect(),
            crls,
        };
        Ok((config, trusted))
    }

    /// Cross-checks the trust material the way the TLS module will use it: every CA
    /// certificate must be usable as a trust anchor, a CRL issued by one of our CAs must
    /// carry its valid signature, and rustls must accept each CRL.
    fn check_trust(
        &self,
        auth: &ClientAuthConfig,
        trusted: &[Loaded],
        enrollment: Option<&EnrollmentConfig>,
    ) -> Result<(), ConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut anchors: Vec<(String, Option<usize>, &CertificateDer<'static>)> = Vec::new();
        for t in trusted {
            for cert in &t.certs.certs {
                anchors.push((t.key.clone(), t.line, cert));
            }
        }
        if let Some(e) = enrollment {
            anchors.extend(
                e.ca_cert
                    .certs
                    .first()
                    .map(|c| ("enrollment.ca_cert".to_string(), None, c)),
            );
        }
        for (key, line, cert) in &anchors {
            roots.add((*cert).clone()).map_err(|e| {
                self.fail(
                    key,
                    *line,
                    format!("a certificate in this file cannot be used as a trust anchor: {e}"),
                )
            })?;
        }
        let roots = Arc::new(roots);
        for (i, crl) in auth.crls.iter().enumerate() {
            let key = format!("client_auth.crls[{i}]");
            let line = self.index.line_of(&key);
            let Ok((_, parsed)) = CertificateRevocationList::from_der(crl.der.as_ref()) else {
                continue; // already checked when loaded
            };
            for (_, _, cert) in &anchors {
                let Ok((_, ca)) = X509Certificate::from_der(cert.as_ref()) else {
                    continue;
                };
                if ca.subject().as_raw() == parsed.issuer().as_raw()
                    && parsed.verify_signature(ca.public_key()).is_err()
                {
                    return Err(self.fail(
                        &key,
                        line,
                        format!(
                            "the CRL in {} names the CA {} as issuer but its signature does not verify with that CA's key",
                            crl.path.display(),
                            crate::core::text::rfc4514(ca.subject())
                        ),
                    ));
                }
            }
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.clone(),
                Arc::new(aws_lc_rs::default_provider()),
            )
            .with_crls([crl.der.clone()])
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| {
                self.fail(
                    &key,
                    line,
                    format!("{} is refused by the TLS library: {e}", crl.path.display()),
                )
            })?;
        }
        Ok(())
    }

    fn identity(&self, id: IdentityFile) -> Result<IdentityConfig, ConfigError> {
        let account_from = match &id.account_from {
            None => vec![
                AccountSource::SanUri,
                AccountSource::SanEmail,
                AccountSource::SubjectCn,
            ],
            Some(list) => {
                if list.is_empty() {
                    return Err(self.fail(
                        "identity.account_from",
                        None,
                        "must list at least one of san_uri, san_email, subject_cn",
                    ));
                }
                let mut out = Vec::new();
                for (i, v) in list.iter().enumerate() {
                    let key = format!("identity.account_from[{i}]");
                    let source = self.choice(
                        &key,
                        &Some(v.clone()),
                        AccountSource::SanUri,
                        &[
                            ("san_uri", AccountSource::SanUri),
                            ("san_email", AccountSource::SanEmail),
                            ("subject_cn", AccountSource::SubjectCn),
                        ],
                    )?;
                    if out.contains(&source) {
                        return Err(self.fail_at(
                            &key,
                            v,
                            format!("{:?} is listed twice", v.value),
                        ));
                    }
                    out.push(source);
                }
                out
            }
        };
        let (prefix, line) = self.string(&id.uri_prefix, defaults::URI_PREFIX);
        if prefix.is_empty() && account_from.contains(&AccountSource::SanUri) {
            return Err(self.fail(
                "identity.uri_prefix",
                line,
                "must not be empty while account_from uses san_uri (any URI would name an account)",
            ));
        }
        let session_cookie = match &id.session_cookie {
            None => None,
            Some(v) => {
                let name = v.value.trim();
                // RFC 6265 cookie-name: an HTTP token.
                let token = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token {
                    return Err(self.fail_at(
                        "identity.session_cookie",
                        v,
                        format!(
                            "{:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~ \
                             only), e.g. \"sessionid\"",
                            v.value
                        ),
                    ));
                }
                Some(name.to_string())
            }
        };
        let session_cookie_ttl = self.positive_duration(
            "identity.session_cookie_ttl",
            &id.session_cookie_ttl,
            defaults::SESSION_COOKIE_TTL,
        )?;
        Ok(IdentityConfig {
            account_from,
            uri_prefix: prefix.to_string(),
            session_cookie,
            session_cookie_ttl,
        })
    }

    fn upstream(&self, up: Option<UpstreamFile>) -> Result<UpstreamConfig, ConfigError> {
        let up = up.unwrap_or_default();
        let Some(url_v) = &up.url else {
            return Err(self.fail(
                "upstream.url",
                None,
                "this key is required: the app to forward to, e.g. \"http://127.0.0.1:8080\"",
            ));
        };
        let url = http_url("upstream.url", &url_v.value)
            .map_err(|m| self.fail_at("upstream.url", url_v, m))?;
        if url.query().is_some() {
            return Err(self.fail_at(
                "upstream.url",
                url_v,
                format!("{:?} must not have a query", url_v.value),
            ));
        }
        Ok(UpstreamConfig {
            url,
            connect_timeout: self.positive_duration(
                "upstream.connect_timeout",
                &up.connect_timeout,
                defaults::CONNECT_TIMEOUT,
            )?,
            response_timeout: self.positive_duration(
                "upstream.response_timeout",
                &up.response_timeout,
                defaults::RESPONSE_TIMEOUT,
            )?,
            pool_idle_timeout: self.positive_duration(
                "upstream.pool_idle_timeout",
                &up.pool_idle_timeout,
                defaults::POOL_IDLE_TIMEOUT,
            )?,
            pool_max_idle_per_host: to_usize(self.number(
                "upstream.pool_max_idle_per_host",
                &up.pool_max_idle_per_host,
                defaults::POOL_MAX_IDLE_PER_HOST,
                0,
                u64::from(u32::MAX),
            )?),
        })
    }

    fn routes(&self, routes: RoutesFile) -> Result<RoutesConfig, ConfigError> {
        let mut public = Vec::new();
        for (i, v) in routes.public.unwrap_or_default().iter().enumerate() {
            let key = format!("routes.public[{i}]");
            let route = public_route(&v.value)
                .map_err(|why| self.fail_at(&key, v, format!("{:?} {why}", v.value)))?;
            if !public.contains(&route) {
                public.push(route);
            }
        }
        Ok(RoutesConfig {
            public,
            public_upgrades: self.bool(&routes.public_upgrades, false),
        })
    }

    fn state(&self, st: StateFile) -> Result<StateConfig, ConfigError> {
        #[derive(Clone, Copy)]
        enum Backend {
            Embedded,
            Redis,
        }
        let backend = self.choice(
            "state.backend",
            &st.backend,
            Backend::Embedded,
            &[("embedded", Backend::Embedded), ("redis", Backend::Redis)],
        )?;
        let redis = st.redis.unwrap_or_default();
        let mode = self.choice(
            "state.redis.mode",
            &redis.mode,
            RedisMode::Standalone,
            &[
                ("standalone", RedisMode::Standalone),
                ("sentinel", RedisMode::Sentinel),
                ("cluster", RedisMode::Cluster),
            ],
        )?;
        let backend = match backend {
            // The redis keys are type-checked above even when another backend is chosen,
            // so a config prepared for Redis fails early on a typo; the cross-checks below
            // only apply when the backend is in use.
            Backend::Redis => StateBackend::Redis(self.redis(mode, &redis)?),
            Backend::Embedded => {
                let (path, _) = self.path("state.path", &st.path, defaults::STATE_PATH)?;
                StateBackend::Embedded { path }
            }
        };
        let cache = st.cache.unwrap_or_default();
        let on_error = self.choice(
            "state.on_error",
            &st.on_error,
            OnError::FailClosed,
            &[
                ("fail_closed", OnError::FailClosed),
                ("serve_stale", OnError::ServeStale),
            ],
        )?;
        let max_stale = self.duration("state.max_stale", &st.max_stale, defaults::MAX_STALE)?;
        if on_error == OnError::ServeStale && max_stale.is_zero() {
            return Err(self.fail(
                "state.max_stale",
                st.max_stale.as_ref().and_then(span_line),
                "must be greater than 0 when on_error is serve_stale",
            ));
        }
        Ok(StateConfig {
            backend,
            cache: CacheConfig {
                ttl: self.positive_duration("state.cache.ttl", &cache.ttl, defaults::CACHE_TTL)?,
                max_entries: self.number(
                    "state.cache.max_entries",
                    &cache.max_entries,
                    defaults::CACHE_MAX_ENTRIES,
                    1,
                    u64::MAX,
                )?,
            },
            on_error,
            max_stale,
        })
    }

    /// `state.redis.*` for `backend: redis`. Each mode must have what it needs and nothing
    /// that only another mode reads (a seed list under `mode: standalone` would be silently
    /// unused, which is how an operator ends up with one Redis where they meant three).
    fn redis(&self, mode: RedisMode, r: &RedisFile) -> Result<RedisConfig, ConfigError> {
        let (url, url_line) = self.string(&r.url, defaults::REDIS_URL);
        let url = url.trim().to_string();
        let urls: Vec<(String, Option<usize>)> = r
            .urls
            .iter()
            .flatten()
            .map(|v| (v.value.trim().to_string(), span_line(v)))
            .collect();
        let (master, master_line) = self.string(&r.sentinel_master, "");
        let master = master.trim().to_string();
        let mode_name = match mode {
            RedisMode::Standalone => "standalone",
            RedisMode::Sentinel => "sentinel",
            RedisMode::Cluster => "cluster",
        };
        match mode {
            RedisMode::Standalone => {
                redis_url(&url).map_err(|m| self.fail("state.redis.url", url_line, m))?;
                if !urls.is_empty() {
                    return Err(self.fail(
                        "state.redis.urls",
                        None,
                        "is read only with mode sentinel or cluster; with mode standalone set \
                         state.redis.url (or set state.redis.mode)",
                    ));
                }
            }
            RedisMode::Sentinel | RedisMode::Cluster => {
                if r.url.is_some() && url != defaults::REDIS_URL {
                    return Err(self.fail(
                        "state.redis.url",
                        url_line,
                        format!(
                            "is read only with mode standalone; with mode {mode_name} list the \
                             {} in state.redis.urls",
                            if mode == RedisMode::Sentinel {
                                "sentinels"
                            } else {
                                "cluster seed nodes"
                            }
                        ),
                    ));
                }
                if urls.is_empty() {
                    return Err(self.fail(
                        "state.redis.urls",
                        None,
                        format!(
                            "mode {mode_name} needs at least one address here, e.g. [\"{}\"]",
                            if mode == RedisMode::Sentinel {
                                "redis://10.0.0.1:26379"
                            } else {
                                "redis://10.0.0.1:6379"
                            }
                        ),
                    ));
                }
                for (i, (u, line)) in urls.iter().enumerate() {
                    redis_url(u)
                        .map_err(|m| self.fail(&format!("state.redis.urls[{i}]"), *line, m))?;
                }
            }
        }
        if mode == RedisMode::Sentinel && master.is_empty() {
            return Err(self.fail(
                "state.redis.sentinel_master",
                master_line,
                "mode sentinel needs the master's name as the sentinels know it (e.g. \"mymaster\")",
            ));
        }
        if mode != RedisMode::Sentinel && !master.is_empty() {
            return Err(self.fail(
                "state.redis.sentinel_master",
                master_line,
                format!("is read only with mode sentinel, not {mode_name}"),
            ));
        }
        let password = match &r.password_file {
            Some(v) if !v.value.trim().is_empty() => {
                let path = self.dir.join(v.value.trim());
                let line = span_line(v);
                let bytes = self.read("state.redis.password_file", line, &path, "")?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    self.fail(
                        "state.redis.password_file",
                        line,
                        format!("{} is not UTF-8 text", path.display()),
                    )
                })?;
                let password = text.trim();
                if password.is_empty() {
                    return Err(self.fail(
                        "state.redis.password_file",
                        line,
                        format!("{} is empty", path.display()),
                    ));
                }
                Some(Secret::new(password))
            }
            _ => None,
        };
        if password.is_some() && mode == RedisMode::Standalone && url_has_password(&url) {
            return Err(self.fail(
                "state.redis.password_file",
                r.password_file.as_ref().and_then(span_line),
                "state.redis.url carries a password as well; keep it in one place",
            ));
        }
        let tls_ca = match &r.tls_ca_file {
            Some(v) if !v.value.trim().is_empty() => {
                let line = span_line(v);
                let tls_urls = match mode {
                    RedisMode::Standalone => vec![url.as_str()],
                    _ => urls.iter().map(|(u, _)| u.as_str()).collect(),
                };
                if !tls_urls.iter().any(|u| u.starts_with("rediss://")) {
                    return Err(self.fail(
                        "state.redis.tls_ca_file",
                        line,
                        "is read only for TLS connections; use rediss:// URLs (or remove it)",
                    ));
                }
                let loaded = self.certs(
                    "state.redis.tls_ca_file",
                    line,
                    self.dir.join(v.value.trim()),
                    "",
                )?;
                Some(loaded.certs)
            }
            _ => None,
        };
        let (prefix, prefix_line) = self.string(&r.key_prefix, defaults::REDIS_KEY_PREFIX);
        if prefix.len() > 64
            || prefix
                .chars()
                .any(|c| matches!(c, '{' | '}') || c.is_whitespace() || c.is_control())
        {
            return Err(self.fail(
                "state.redis.key_prefix",
                prefix_line,
                format!(
                    "{prefix:?} must be at most 64 characters without spaces, control \
                     characters, '{{' or '}}' (the prefix is literal, never a cluster hash tag)"
                ),
            ));
        }
        let timeout = match &r.timeout {
            None => Duration::from_millis(defaults::REDIS_TIMEOUT_MS),
            Some(v) => {
                let d = units::parse_duration(&v.value)
                    .map_err(|e| self.fail_at("state.redis.timeout", v, e.to_string()))?;
                if d < Duration::from_millis(10) || d > Duration::from_secs(30) {
                    return Err(self.fail_at(
                        "state.redis.timeout",
                        v,
                        format!(
                            "{:?} must be between 10ms and 30s: it is how long a request waits \
                             for Redis before it is answered from the cache or refused (e.g. \
                             \"500ms\")",
                            v.value
                        ),
                    ));
                }
                d
            }
        };
        Ok(RedisConfig {
            mode,
            url,
            urls: urls.into_iter().map(|(u, _)| u).collect(),
            sentinel_master: master,
            password,
            tls_ca,
            key_prefix: prefix.to_string(),
            timeout,
        })
    }

    fn enrollment(&self, en: &EnrollmentFile) -> Result<Option<EnrollmentConfig>, ConfigError> {
        if !self.bool(&en.enabled, true) {
            return Ok(None);
        }
        let hint =
            "; run `certgate init` to create a development CA, or set enrollment.enabled: false";
        let (cert_path, cert_line) =
            self.path("enrollment.ca_cert", &en.ca_cert, defaults::ENROLL_CA_CERT)?;
        let cert = self.certs("enrollment.ca_cert", cert_line, cert_path, hint)?;
        let first = cert
            .certs
            .certs
            .first()
            .expect("certs() returns at least one");
        let (_, parsed) = X509Certificate::from_der(first.as_ref()).map_err(|e| {
            self.fail(
                "enrollment.ca_cert",
                cert_line,
                format!("{}: {e}", cert.certs.path.display()),
            )
        })?;
        if !parsed.is_ca() {
            return Err(self.fail(
                "enrollment.ca_cert",
                cert_line,
                format!(
                    "{} ({}) is not a CA certificate (basicConstraints CA:true is missing)",
                    cert.certs.path.display(),
                    crate::core::text::rfc4514(parsed.subject())
                ),
            ));
        }
        let (key_path, key_line) =
            self.path("enrollment.ca_key", &en.ca_key, defaults::ENROLL_CA_KEY)?;
        let ca_key = self.key_for("enrollment.ca_key", key_line, key_path.clone(), &cert, hint)?;
        // The issuing key must not be readable by other users (checked here so that
        // check-config catches it, not only start-up).
        crate::pki::ca::check_key_file_private(&key_path)
            .map_err(|e| self.fail("enrollment.ca_key", key_line, e.to_string()))?;
        let (url_text, url_line) = self.string(&en.public_url, defaults::PUBLIC_URL);
        let url = http_url("enrollment.public_url", url_text)
            .map_err(|m| self.fail("enrollment.public_url", url_line, m))?;
        if url.query().is_some() {
            return Err(self.fail(
                "enrollment.public_url",
                url_line,
                format!("{url_text:?} must not have a query"),
            ));
        }
        Ok(Some(EnrollmentConfig {
            enabled: true,
            ca_cert: cert.certs,
            ca_key,
            validity: self.positive_duration(
                "enrollment.validity",
                &en.validity,
                defaults::VALIDITY,
            )?,
            ticket_ttl: self.positive_duration(
                "enrollment.ticket_ttl",
                &en.ticket_ttl,
                defaults::TICKET_TTL,
            )?,
            public_url: url_text.trim().trim_end_matches('/').to_string(),
            server_side_keys: self.bool(&en.server_side_keys, true),
            renew_before: self.duration(
                "enrollment.renew_before",
                &en.renew_before,
                defaults::RENEW_BEFORE,
            )?,
        }))
    }

    /// `headers.assertion`: on when `audience` is set.
    fn assertion(&self, a: &AssertionFile) -> Result<Option<AssertionConfig>, ConfigError> {
        let Some(audience) = &a.audience else {
            if let Some(v) = a.issuer.as_ref().or(a.key_file.as_ref()) {
                return Err(self.fail_at(
                    "headers.assertion.audience",
                    v,
                    "headers.assertion needs an audience (the application's name or URL, \
                     checked by the application as `aud`); set it, or remove headers.assertion",
                ));
            }
            return Ok(None);
        };
        let audience_text = audience.value.trim();
        if audience_text.is_empty() {
            return Err(self.fail_at(
                "headers.assertion.audience",
                audience,
                "the audience must not be empty",
            ));
        }
        let (issuer, issuer_line) = self.string(&a.issuer, defaults::ASSERTION_ISSUER);
        if issuer.trim().is_empty() {
            return Err(self.fail(
                "headers.assertion.issuer",
                issuer_line,
                "the issuer must not be empty",
            ));
        }
        let ttl = self.duration("headers.assertion.ttl", &a.ttl, defaults::ASSERTION_TTL)?;
        if !(Duration::from_secs(5)..=Duration::from_secs(3600)).contains(&ttl) {
            return Err(self.fail(
                "headers.assertion.ttl",
                a.ttl.as_ref().and_then(span_line),
                format!(
                    "{:?} is out of range (between 5s and 1h: the application accepts a token \
                     until it expires)",
                    a.ttl.as_ref().map(|v| v.value.as_str()).unwrap_or_default()
                ),
            ));
        }
        let (key_file, key_line) = self.path(
            "headers.assertion.key_file",
            &a.key_file,
            defaults::ASSERTION_KEY_FILE,
        )?;
        let hint = format!(
            "; run `certgate init` (it writes {}) or `certgate rotate-assertion-key --config {}` \
             to make one",
            defaults::ASSERTION_KEY_FILE,
            self.file.display()
        );
        let key = self.assertion_key("headers.assertion.key_file", key_line, &key_file, &hint)?;
        let previous_key_file = match &a.previous_key_file {
            Some(_) => {
                self.path(
                    "headers.assertion.previous_key_file",
                    &a.previous_key_file,
                    "",
                )?
                .0
            }
            None => previous_key_path(&key_file),
        };
        let previous_line = a.previous_key_file.as_ref().and_then(span_line);
        let previous_key = if previous_key_file.exists() || a.previous_key_file.is_some() {
            Some(self.assertion_key(
                "headers.assertion.previous_key_file",
                previous_line,
                &previous_key_file,
                "",
            )?)
        } else {
            None
        };
        Ok(Some(AssertionConfig {
            audience: audience_text.to_string(),
            issuer: issuer.trim().to_string(),
            ttl,
            key_file,
            key,
            previous_key_file,
            previous_key,
        }))
    }

    /// A P-256 PKCS#8 key for the assertion, private to its owner.
    fn assertion_key(
        &self,
        key: &str,
        line: Option<usize>,
        path: &Path,
        missing_hint: &str,
    ) -> Result<Vec<u8>, ConfigError> {
        let bytes = self.read(key, line, path, missing_hint)?;
        let der = crate::pki::assertion::key_der_from_pem(&bytes)
            .and_then(|der| {
                crate::pki::assertion::AssertionSigner::new(
                    "i",
                    "a",
                    Duration::from_secs(60),
                    &der,
                    None,
                )
                .map(|_| der)
            })
            .map_err(|e| {
                self.fail(
                    key,
                    line,
                    format!(
                        "{}: {e}; make one with `openssl genpkey -algorithm EC -pkeyopt \
                         ec_paramgen_curve:P-256`",
                        path.display()
                    ),
                )
            })?;
        crate::pki::ca::check_key_file_private(path)
            .map_err(|e| self.fail(key, line, e.to_string()))?;
        Ok(der)
    }

    fn limits(&self, l: LimitsFile) -> Result<LimitsConfig, ConfigError> {
        let max_header_bytes = match &l.max_header_bytes {
            None => defaults::MAX_HEADER_BYTES,
            Some(v) => {
                let n = units::parse_size(&v.value)
                    .map_err(|e| self.fail_at("limits.max_header_bytes", v, e.to_string()))?;
                if !(1024..=1024 * 1024).contains(&n) {
                    return Err(self.fail_at(
                        "limits.max_header_bytes",
                        v,
                        format!(
                            "{:?} is out of range (must be between 1KiB and 1MiB)",
                            v.value
                        ),
                    ));
                }
                n
            }
        };
        let age = self.duration("limits.max_connection_age", &l.max_connection_age, 0)?;
        let response_buffer = match &l.response_buffer {
            None => defaults::RESPONSE_BUFFER,
            Some(v) => {
                let n = units::parse_size(&v.value)
                    .map_err(|e| self.fail_at("limits.response_buffer", v, e.to_string()))?;
                if !(1024 * 1024..=1024 * 1024 * 1024 * 1024).contains(&n) {
                    return Err(self.fail_at(
                        "limits.response_buffer",
                        v,
                        format!(
                            "{:?} is out of range (must be between 1MiB and 1TiB)",
                            v.value
                        ),
                    ));
                }
                n
            }
        };
        Ok(LimitsConfig {
            max_connections: to_usize(self.number(
                "limits.max_connections",
                &l.max_connections,
                defaults::MAX_CONNECTIONS,
                1,
                u64::from(u32::MAX),
            )?),
            handshake_timeout: self.positive_duration(
                "limits.handshake_timeout",
                &l.handshake_timeout,
                defaults::HANDSHAKE_TIMEOUT,
            )?,
            header_read_timeout: self.positive_duration(
                "limits.header_read_timeout",
                &l.header_read_timeout,
                defaults::HEADER_READ_TIMEOUT,
            )?,
            max_header_bytes: to_usize(max_header_bytes),
            idle_timeout: self.positive_duration(
                "limits.idle_timeout",
                &l.idle_timeout,
                defaults::IDLE_TIMEOUT,
            )?,
            h2_max_concurrent_streams: u32::try_from(self.number(
                "limits.h2_max_concurrent_streams",
                &l.h2_max_concurrent_streams,
                defaults::H2_MAX_CONCURRENT_STREAMS,
                1,
                u64::from(u32::MAX),
            )?)
            .unwrap_or(u32::MAX),
            max_connection_age: (!age.is_zero()).then_some(age),
            send_timeout: self.positive_duration(
                "limits.send_timeout",
                &l.send_timeout,
                defaults::SEND_TIMEOUT,
            )?,
            response_buffer: to_usize(response_buffer),
            h2_control_frames_per_second: u32::try_from(self.number(
                "limits.h2_control_frames_per_second",
                &l.h2_control_frames_per_second,
                defaults::H2_CONTROL_FRAMES_PER_SECOND,
                0,
                1_000_000,
            )?)
            .unwrap_or(u32::MAX),
        })
    }

    fn log(&self, l: LogFile) -> Result<LogConfig, ConfigError> {
        let format = self.choice(
            "log.format",
            &l.format,
            LogFormat::Text,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )?;
        let (level, line) = self.string(&l.level, "info");
        let level = level.trim();
        if level.is_empty() {
            return Err(self.fail(
                "log.level",
                line,
                "must not be empty (e.g. \"info\" or \"certgate=debug,info\")",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level) {
            return Err(self.fail(
                "log.level",
                line,
                format!("{level:?} is not a valid log filter: {e}"),
            ));
        }
        Ok(LogConfig {
            format,
            level: level.to_string(),
            access: self.bool(&l.access, false),
        })
    }
}

/// Two listeners clash when they would bind the same port on overlapping addresses. Port 0
/// (pick any free port) never clashes.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// An absolute `http://` or `https://` URL with a host. Returns the message on error.
fn http_url(key: &str, text: &str) -> Result<http::Uri, String> {
    let text = text.trim();
    let bad = |why: &str| format!("{text:?} is not a valid {key}: {why}");
    let url: http::Uri = text.parse().map_err(|e| bad(&format!("{e}")))?;
    match url.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(bad(&format!(
                "the scheme must be http or https, not {other:?}"
            )));
        }
        None => return Err(bad("it must start with http:// or https://")),
    }
    let Some(authority) = url.authority() else {
        return Err(bad("it has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    if authority.host().is_empty() {
        return Err(bad("it has no host"));
    }
    Ok(url)
}

/// A `redis://` or `rediss://` URL the Redis client accepts. Returns the message on error;
/// the message never repeats a password written in the URL.
fn redis_url(text: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    let shown = super::redact_url(text);
    let bad = |why: &str| format!("{shown:?} is not a valid Redis URL: {why}");
    if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
        return Err(bad("it must start with redis:// or rediss:// (TLS)"));
    }
    let info = text
        .into_connection_info()
        .map_err(|e| bad(&format!("{:?}", e.kind())))?;
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. }
            if !host.is_empty() => {}
        _ => return Err(bad("it has no host")),
    }
    Ok(())
}

/// True when the URL's user part holds a password (`redis://:pw@host` or `user:pw@host`).
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
}

/// Normalises one `routes.public` entry, or says what is wrong with it.
fn public_route(text: &str) -> Result<String, &'static str> {
    if !text.starts_with('/') {
        return Err("must start with '/'");
    }
    if text.contains("..") {
        return Err("must not contain '..'");
    }
    if let Some(c) = text
        .chars()
        .find(|c| matches!(c, '%' | '\\' | '?' | '#') || c.is_whitespace() || c.is_control())
    {
        return Err(match c {
            '%' => "must not contain '%' (write the decoded path; matching is on the decoded path)",
            '\\' => "must not contain '\\'",
            '?' => "must not contain '?' (a query is not part of the path)",
            '#' => "must not contain '#'",
            _ => "must not contain spaces or control characters",
        });
    }
    let trimmed = text.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".to_string());
    }
    if trimmed[1..]
        .split('/')
        .any(|seg| seg.is_empty() || seg == ".")
    {
        return Err("must not contain empty or '.' segments");
    }
    if trimmed == "/.certgate" || trimmed.starts_with("/.certgate/") {
        return Err("is under /.certgate, which is reserved for certgate's own endpoints");
    }
    Ok(trimmed.to_string())
}

impl Config {
    /// Loads and validates `path` (see [`load`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load(path)
    }

    /// Parses and validates YAML text as if it were the file `path` (relative paths are
    /// resolved against `path`'s folder). Used by tests and `check-config`.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        from_yaml(text, path)
    }
}

#[cfg(test)]
mod tests;

/// Where the previous assertion key is kept, next to the current one:
/// `assertion-key.pem` → `assertion-key.previous.pem`.
pub fn previous_key_path(key_file: &Path) -> PathBuf {
    let name = key_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let previous = match name.strip_suffix(".pem") {
        Some(stem) => format!("{stem}.previous.pem"),
        None => format!("{name}.previous"),
    };
    key_file.with_file_name(previous)
}
