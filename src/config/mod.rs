//! Configuration: `certgate.yaml` → [`file::FileConfig`] (serde, `deny_unknown_fields`,
//! with line numbers) → validated runtime [`Config`].
//!
//! Everything that can be checked without binding a socket is checked here: files exist and
//! parse, keys match certificates, addresses do not clash, values are in range. Every error
//! names the file, the line (when the key is in the file) and the dotted key, so an operator
//! can fix it without reading code. The TLS module turns the loaded material into rustls
//! types; nothing here binds or spawns.

pub mod file;
pub mod read;
pub mod schema;
pub mod units;
mod warn;
mod yaml;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::core::identity::AccountSource;

pub use file::load;
pub use yaml::key_location;

/// A configuration error, always pointing at the file and key it comes from.
/// Shown as `file:line: key: message`; an error about the whole file is `file: message`.
#[derive(Debug, thiserror::Error)]
#[error(
    "{file}{}: {}{message}",
    line.map(|l| format!(":{l}")).unwrap_or_default(),
    if key == "(file)" { String::new() } else { format!("{key}: ") }
)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line of the key in the file, when the key is written there.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `client_auth.trusted_cas[1]`; `(file)` for whole-file problems.
    pub key: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// A connection without a certificate completes (enrollment and public paths work).
    Optional,
    /// The handshake fails without a certificate.
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMinVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    FailClosed,
    ServeStale,
}

impl OnError {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::FailClosed => "fail_closed",
            OnError::ServeStale => "serve_stale",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A PEM file loaded and parsed at validation time. Keeping the parsed DER here means the
/// TLS module never re-reads a file that might have changed since it was validated.
#[derive(Clone, PartialEq, Eq)]
pub struct PemCerts {
    pub path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
}

impl PemCerts {
    /// Unix time of the first certificate's `notAfter`.
    pub fn leaf_not_after(&self) -> Option<i64> {
        use x509_parser::prelude::FromDer as _;
        let der = self.certs.first()?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
        Some(cert.validity().not_after.timestamp())
    }
}

impl std::fmt::Debug for PemCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PemCerts({}, {} certs)",
            self.path.display(),
            self.certs.len()
        )
    }
}

/// A private key; `Debug` never prints the key material.
pub struct SecretKey {
    pub path: PathBuf,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for SecretKey {
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}, ...)", self.path.display())
    }
}

#[derive(Clone)]
pub struct Crl {
    pub path: PathBuf,
    pub der: CertificateRevocationListDer<'static>,
    /// Revoked serials (lowercase hex, see [`crate::core::text::serial_hex`]) with the raw
    /// issuer name they belong to, for the per-request check on resumed sessions.
    pub revoked: Vec<(Vec<u8>, String)>,
    /// `nextUpdate` as unix seconds, when present.
    pub next_update: Option<i64>,
}

impl std::fmt::Debug for Crl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Crl({}, {} revoked)",
            self.path.display(),
            self.revoked.len()
        )
    }
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Server chain, leaf first.
    pub cert: PemCerts,
    pub key: SecretKey,
    pub min_version: TlsMinVersion,
    pub session_resumption: bool,
}

#[derive(Debug, Clone)]
pub struct ClientAuthConfig {
    pub mode: ClientAuthMode,
    /// Every configured client CA file; the enrollment CA is added by the TLS module.
    pub trusted_cas: Vec<PemCerts>,
    pub crls: Vec<Crl>,
}

impl ClientAuthConfig {
    /// The earliest `nextUpdate` of the configured CRLs (unix seconds), when any has one.
    pub fn crl_deadline(&self) -> Option<i64> {
        self.crls.iter().filter_map(|c| c.next_update).min()
    }
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub account_from: Vec<AccountSource>,
    pub uri_prefix: String,
    /// `identity.session_cookie`: the app's session cookie, bound to the account whose
    /// certificate received it.
    pub session_cookie: Option<String>,
    /// How long a binding lasts for a cookie that has no `Max-Age` or `Expires`.
    pub session_cookie_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `http://` or `https://` base; its path (if any) is prefixed to forwarded paths.
    pub url: http::Uri,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

#[derive(Debug, Clone)]
pub struct RoutesConfig {
    /// Normalised public prefixes: leading `/`, no trailing `/` (except the root `/`).
    pub public: Vec<String>,
    /// `routes.public_upgrades`: whether a request on a public route may upgrade the
    /// connection (WebSocket). Off: the upgrade is not forwarded, so no tunnel opens
    /// without a certificate.
    pub public_upgrades: bool,
}

#[derive(Debug, Clone)]
pub struct HeadersConfig {
    /// `headers.identity`: which identity headers are sent.
    pub identity: IdentityHeaderSet,
    pub xfcc: bool,
    pub underscores: Underscores,
    pub request_id: RequestIdMode,
    /// `headers.assertion`; `None` when off.
    pub assertion: Option<AssertionConfig>,
}

/// `headers.identity`: each identity header on (sent) or off; all on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityHeaderSet {
    pub account: bool,
    pub serial: bool,
    pub fingerprint: bool,
    pub subject: bool,
    pub not_after: bool,
    pub client_cert: bool,
}

impl Default for IdentityHeaderSet {
    fn default() -> Self {
        IdentityHeaderSet {
            account: true,
            serial: true,
            fingerprint: true,
            subject: true,
            not_after: true,
            client_cert: true,
        }
    }
}

/// `headers.assertion`: an ES256 JWS in `X-Client-Assertion` on every request forwarded
/// with identity headers.
#[derive(Clone)]
pub struct AssertionConfig {
    pub audience: String,
    pub issuer: String,
    pub ttl: Duration,
    pub key_file: PathBuf,
    /// PKCS#8 DER of the signing key (P-256).
    pub key: Vec<u8>,
    pub previous_key_file: PathBuf,
    /// The previous key, still published (absent until the first rotation).
    pub previous_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for AssertionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionConfig")
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("ttl", &self.ttl)
            .field("key_file", &self.key_file)
            .field("previous_key_file", &self.previous_key_file)
            .finish_non_exhaustive()
    }
}

/// `headers.underscores`: what happens to a client header whose name contains `_`.
/// Identity headers are removed in every spelling whatever this says; the policy is about
/// the other names, because applications that map `_` and `-` to one variable (CGI, WSGI,
/// PHP-FPM) let `X_Foo` shadow or join the `X-Foo` a front proxy vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underscores {
    /// Removed before forwarding (default; nginx's `underscores_in_headers off`).
    Drop,
    /// A request with any such name is refused with 400 `bad_request`.
    Reject,
    /// Forwarded unchanged.
    Allow,
}

/// `headers.request_id`: the `X-Request-Id` sent to the application, returned to the
/// client and written to the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestIdMode {
    /// A new id for every request; a client's own header is replaced (default).
    Generate,
    /// A client's id is kept when it is one short plain value (behind a front proxy that
    /// sets it); otherwise a new one.
    Accept,
    /// No id: a client's header is removed.
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub max_entries: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StateBackend {
    /// redb file store at this path.
    Embedded { path: PathBuf },
    /// Shared state in Redis (`state.redis.*`).
    Redis(RedisConfig),
}

/// How certgate reaches Redis (`state.redis.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One server (`state.redis.url`).
    Standalone,
    /// A master found through Sentinel (`state.redis.urls` are the sentinels).
    Sentinel,
    /// Redis Cluster (`state.redis.urls` are seed nodes).
    Cluster,
}

/// A secret read from a file at validation time; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(...)")
    }
}

/// `state.redis.*`, validated: URLs parse and use `redis://` or `rediss://`, the mode has
/// the keys it needs, and the password file has been read. `PartialEq` compares the
/// secrets too (unlike the redacted `Debug`), so a changed password counts as a change.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub mode: RedisMode,
    /// Standalone server URL (may carry a password in its user part, and the database
    /// number as its path).
    pub url: String,
    /// Sentinel addresses (mode sentinel) or cluster seed nodes (mode cluster).
    pub urls: Vec<String>,
    /// The master's name as the sentinels know it (mode sentinel).
    pub sentinel_master: String,
    /// Read from `state.redis.password_file` (trimmed); `None` when no file is set.
    pub password: Option<Secret>,
    /// `state.redis.tls_ca_file`: the CAs a `rediss://` server certificate must chain to,
    /// instead of the system roots. `None`: the system roots.
    pub tls_ca: Option<PemCerts>,
    /// Literal prefix of every key and of the `events` channel (no hash tag).
    pub key_prefix: String,
    /// `state.redis.timeout`: how long one per-request read (and the probe) may take,
    /// connecting included. Writes get at least [`crate::state::redis::WRITE_TIMEOUT`].
    pub timeout: Duration,
}

impl RedisConfig {
    /// A one-line description for logs and `check-config`: mode and hosts, never
    /// credentials.
    pub fn describe(&self) -> String {
        let hosts = match self.mode {
            RedisMode::Standalone => vec![redact_url(&self.url)],
            RedisMode::Sentinel | RedisMode::Cluster => {
                self.urls.iter().map(|u| redact_url(u)).collect()
            }
        };
        match self.mode {
            RedisMode::Standalone => format!("redis {}", hosts.join(",")),
            RedisMode::Sentinel => format!(
                "redis sentinel master {:?} via {}",
                self.sentinel_master,
                hosts.join(",")
            ),
            RedisMode::Cluster => format!("redis cluster {}", hosts.join(",")),
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("mode", &self.mode)
            .field("url", &redact_url(&self.url))
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("sentinel_master", &self.sentinel_master)
            .field("password", &self.password)
            .field("tls_ca", &self.tls_ca)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// `url` with any `user:password@` part replaced by `...@`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://...@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    pub backend: StateBackend,
    pub cache: CacheConfig,
    pub on_error: OnError,
    pub max_stale: Duration,
}

#[derive(Debug, Clone)]
pub struct EnrollmentConfig {
    /// Always true here: with `enrollment.enabled: false`, [`Config::enrollment`] is `None`
    /// and the CA files are not read.
    pub enabled: bool,
    /// The issuing CA certificate (first in the file; checked to be a CA).
    pub ca_cert: PemCerts,
    /// Its private key, checked to match `ca_cert`.
    pub ca_key: SecretKey,
    pub validity: Duration,
    pub ticket_ttl: Duration,
    /// Base of the enroll_url handed out, without a trailing slash.
    pub public_url: String,
    /// `enrollment.server_side_keys`: the page's form without JavaScript (and
    /// `POST /.certgate/enroll/pkcs12`) may have the key made by the gateway. Off: keys are
    /// only ever made by the client (the page's script, or a CSR).
    pub server_side_keys: bool,
    /// `enrollment.renew_before`: a certificate of the enrollment CA that expires within
    /// this can be renewed by its holder (`/.certgate/certificate`, `/.certgate/renew`);
    /// zero turns self-renewal off.
    pub renew_before: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub idle_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    /// `None` = unlimited.
    pub max_connection_age: Option<Duration>,
    /// Response data the client has not taken for this long drops its connection.
    pub send_timeout: Duration,
    /// Response bytes buffered for clients in all connections together.
    pub response_buffer: usize,
    /// HTTP/2 control frames (SETTINGS, PING, PRIORITY, WINDOW_UPDATE, empty DATA) a
    /// client may send per second before its connection is closed (0 = no limit).
    pub h2_control_frames_per_second: u32,
}

/// What a SIGTERM does: a lame-duck phase (`/readyz` 503, the listener still accepting,
/// every response asking the client to reconnect), then a drain.
#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// How long the listener keeps accepting after the signal while `/readyz` says 503, so
    /// load balancers take the instance out before it stops accepting.
    pub drain_delay: Duration,
    /// How long in-flight requests may take to finish after the listener closed.
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_delay: Duration::from_millis(schema::defaults::DRAIN_DELAY_MS),
            timeout: Duration::from_secs(schema::defaults::SHUTDOWN_TIMEOUT),
        }
    }
}

/// `telemetry`: OpenTelemetry traces, exported over OTLP/HTTP when an endpoint is set.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Where spans are sent (`POST`, protobuf), e.g. `http://127.0.0.1:4318/v1/traces`;
    /// `None` (the default) exports nothing and starts no trace.
    pub otlp_endpoint: Option<http::Uri>,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// The share of new traces recorded (0.0 to 1.0); a request that arrives with a
    /// `traceparent` follows its caller's sampling decision.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: schema::defaults::SERVICE_NAME.to_string(),
            sample_ratio: 1.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `certgate=debug,info`.
    pub level: String,
    pub access: bool,
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from.
    pub source: PathBuf,
    pub listen: SocketAddr,
    /// Expect a PROXY protocol v1/v2 header on every connection (behind an L4 balancer).
    pub listen_proxy_protocol: bool,
    pub server_names: Vec<String>,
    pub tls: TlsConfig,
    pub client_auth: ClientAuthConfig,
    pub identity: IdentityConfig,
    pub upstream: UpstreamConfig,
    pub routes: RoutesConfig,
    pub headers: HeadersConfig,
    pub state: StateConfig,
    /// `None` when `enrollment.enabled: false`.
    pub enrollment: Option<EnrollmentConfig>,
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
    pub limits: LimitsConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
}
