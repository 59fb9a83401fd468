//! The config file as written: serde types mirroring `certgate.yaml` key for key
//! (`deny_unknown_fields`, every scalar with its position), and the defaults. Turning these
//! into the validated [`super::Config`] is `file.rs`'s job.

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A scalar (or list item) together with where it was written.
pub type S<T> = Spanned<T>;

/// The whole file, as written. See DESIGN.md "Config (YAML)" for the meaning of each key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<S<String>>,
    pub listen_proxy_protocol: Option<S<bool>>,
    pub server_names: Option<Vec<S<String>>>,
    pub tls: Option<TlsFile>,
    pub client_auth: Option<ClientAuthFile>,
    pub identity: Option<IdentityFile>,
    pub upstream: Option<UpstreamFile>,
    pub routes: Option<RoutesFile>,
    pub headers: Option<HeadersFile>,
    pub state: Option<StateFile>,
    pub enrollment: Option<EnrollmentFile>,
    pub admin: Option<AdminFile>,
    pub metrics: Option<MetricsFile>,
    pub limits: Option<LimitsFile>,
    pub shutdown: Option<ShutdownFile>,
    pub log: Option<LogFile>,
    pub telemetry: Option<TelemetryFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Required.
    pub cert: Option<S<String>>,
    /// Required.
    pub key: Option<S<String>>,
    pub min_version: Option<S<String>>,
    pub session_resumption: Option<S<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthFile {
    pub mode: Option<S<String>>,
    pub trusted_cas: Option<Vec<S<String>>>,
    pub crls: Option<Vec<S<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    pub account_from: Option<Vec<S<String>>>,
    pub uri_prefix: Option<S<String>>,
    pub session_cookie: Option<S<String>>,
    pub session_cookie_ttl: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// Required.
    pub url: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    pub response_timeout: Option<S<String>>,
    pub pool_idle_timeout: Option<S<String>>,
    pub pool_max_idle_per_host: Option<S<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    pub public: Option<Vec<S<String>>>,
    pub public_upgrades: Option<S<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersFile {
    pub identity: Option<IdentityHeadersFile>,
    pub xfcc: Option<S<bool>>,
    pub underscores: Option<S<String>>,
    pub request_id: Option<S<String>>,
    pub assertion: Option<AssertionFile>,
}

/// `headers.identity`: which identity headers are sent (each on by default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeadersFile {
    pub account: Option<S<bool>>,
    pub serial: Option<S<bool>>,
    pub fingerprint: Option<S<bool>>,
    pub subject: Option<S<bool>>,
    pub not_after: Option<S<bool>>,
    pub client_cert: Option<S<bool>>,
}

/// `headers.assertion`: the signed identity assertion; on when `audience` is set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionFile {
    pub audience: Option<S<String>>,
    pub issuer: Option<S<String>>,
    pub ttl: Option<S<String>>,
    pub key_file: Option<S<String>>,
    pub previous_key_file: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub backend: Option<S<String>>,
    pub path: Option<S<String>>,
    pub redis: Option<RedisFile>,
    pub cache: Option<CacheFile>,
    pub on_error: Option<S<String>>,
    pub max_stale: Option<S<String>>,
}

/// `state.redis`; read when `state.backend` is `redis` (type-checked always).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    pub mode: Option<S<String>>,
    pub url: Option<S<String>>,
    pub urls: Option<Vec<S<String>>>,
    pub sentinel_master: Option<S<String>>,
    pub password_file: Option<S<String>>,
    pub tls_ca_file: Option<S<String>>,
    pub key_prefix: Option<S<String>>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    pub ttl: Option<S<String>>,
    pub max_entries: Option<S<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentFile {
    pub enabled: Option<S<bool>>,
    pub ca_cert: Option<S<String>>,
    pub ca_key: Option<S<String>>,
    pub validity: Option<S<String>>,
    pub ticket_ttl: Option<S<String>>,
    pub public_url: Option<S<String>>,
    pub server_side_keys: Option<S<bool>>,
    pub renew_before: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<S<String>>,
    pub token_file: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    pub listen: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_connections: Option<S<u64>>,
    pub handshake_timeout: Option<S<String>>,
    pub header_read_timeout: Option<S<String>>,
    pub max_header_bytes: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub h2_max_concurrent_streams: Option<S<u64>>,
    pub max_connection_age: Option<S<String>>,
    pub send_timeout: Option<S<String>>,
    pub response_buffer: Option<S<String>>,
    pub h2_control_frames_per_second: Option<S<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownFile {
    pub drain_delay: Option<S<String>>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    pub otlp_endpoint: Option<S<String>>,
    pub service_name: Option<S<String>>,
    pub sample_ratio: Option<S<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub format: Option<S<String>>,
    pub level: Option<S<String>>,
    pub access: Option<S<bool>>,
}

/// Defaults from DESIGN.md, in one place.
pub mod defaults {
    pub const LISTEN: &str = "0.0.0.0:8443";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9444";
    pub const METRICS_LISTEN: &str = "127.0.0.1:9090";
    pub const URI_PREFIX: &str = "urn:certgate:account:";
    pub const STATE_PATH: &str = "data/certgate.db";
    pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
    pub const REDIS_KEY_PREFIX: &str = "certgate:";
    /// `state.redis.timeout`: the bound on one per-request read (and the probe).
    pub const REDIS_TIMEOUT_MS: u64 = 500;
    pub const ENROLL_CA_CERT: &str = "certs/enroll-ca.pem";
    pub const ENROLL_CA_KEY: &str = "certs/enroll-ca.key";
    pub const PUBLIC_URL: &str = "https://localhost:8443";
    pub const TOKEN_FILE: &str = "secrets/admin-token";
    pub const ASSERTION_KEY_FILE: &str = "secrets/assertion-key.pem";
    pub const ASSERTION_ISSUER: &str = "certgate";
    pub const ASSERTION_TTL: u64 = 60;
    /// How long a session cookie without `Max-Age`/`Expires` stays bound.
    pub const SESSION_COOKIE_TTL: u64 = 7 * 86_400;
    pub const CONNECT_TIMEOUT: u64 = 2;
    pub const RESPONSE_TIMEOUT: u64 = 60;
    pub const POOL_IDLE_TIMEOUT: u64 = 90;
    pub const POOL_MAX_IDLE_PER_HOST: u64 = 512;
    pub const CACHE_TTL: u64 = 10;
    pub const CACHE_MAX_ENTRIES: u64 = 100_000;
    pub const MAX_STALE: u64 = 5 * 60;
    pub const VALIDITY: u64 = 365 * 86_400;
    pub const TICKET_TTL: u64 = 24 * 3_600;
    /// `enrollment.renew_before`: 30 days, in seconds.
    pub const RENEW_BEFORE: u64 = 30 * 86_400;
    pub const MAX_CONNECTIONS: u64 = 10_000;
    pub const HANDSHAKE_TIMEOUT: u64 = 10;
    pub const HEADER_READ_TIMEOUT: u64 = 10;
    pub const MAX_HEADER_BYTES: u64 = 64 * 1024;
    pub const IDLE_TIMEOUT: u64 = 60;
    pub const H2_MAX_CONCURRENT_STREAMS: u64 = 256;
    pub const H2_CONTROL_FRAMES_PER_SECOND: u64 = 1000;
    pub const SEND_TIMEOUT: u64 = 60;
    pub const RESPONSE_BUFFER: u64 = 256 * 1024 * 1024;
    /// Milliseconds.
    pub const DRAIN_DELAY_MS: u64 = 2_000;
    pub const SHUTDOWN_TIMEOUT: u64 = 30;
    /// `telemetry.service_name`.
    pub const SERVICE_NAME: &str = "certgate";
}

/// Every key of every section, as written (`""` is the top level): for "did you mean" and
/// "indent it under" hints. A unit test checks each list against what the parser accepts.
pub const KEYS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "listen",
            "listen_proxy_protocol",
            "server_names",
            "tls",
            "client_auth",
            "identity",
            "upstream",
            "routes",
            "headers",
            "state",
            "enrollment",
            "admin",
            "metrics",
            "limits",
            "shutdown",
            "log",
            "telemetry",
        ],
    ),
    ("tls", &["cert", "key", "min_version", "session_resumption"]),
    ("client_auth", &["mode", "trusted_cas", "crls"]),
    (
        "identity",
        &[
            "account_from",
            "uri_prefix",
            "session_cookie",
            "session_cookie_ttl",
        ],
    ),
    (
        "upstream",
        &[
            "url",
            "connect_timeout",
            "response_timeout",
            "pool_idle_timeout",
            "pool_max_idle_per_host",
        ],
    ),
    ("routes", &["public", "public_upgrades"]),
    (
        "headers",
        &["identity", "xfcc", "underscores", "request_id", "assertion"],
    ),
    (
        "headers.identity",
        &[
            "account",
            "serial",
            "fingerprint",
            "subject",
            "not_after",
            "client_cert",
        ],
    ),
    (
        "headers.assertion",
        &["audience", "issuer", "ttl", "key_file", "previous_key_file"],
    ),
    (
        "state",
        &["backend", "path", "redis", "cache", "on_error", "max_stale"],
    ),
    (
        "state.redis",
        &[
            "mode",
            "url",
            "urls",
            "sentinel_master",
            "password_file",
            "tls_ca_file",
            "key_prefix",
            "timeout",
        ],
    ),
    ("state.cache", &["ttl", "max_entries"]),
    (
        "enrollment",
        &[
            "enabled",
            "ca_cert",
            "ca_key",
            "validity",
            "ticket_ttl",
            "public_url",
            "server_side_keys",
            "renew_before",
        ],
    ),
    ("admin", &["listen", "token_file"]),
    ("metrics", &["listen"]),
    (
        "limits",
        &[
            "max_connections",
            "handshake_timeout",
            "header_read_timeout",
            "max_header_bytes",
            "idle_timeout",
            "h2_max_concurrent_streams",
            "max_connection_age",
            "send_timeout",
            "response_buffer",
            "h2_control_frames_per_second",
        ],
    ),
    ("shutdown", &["drain_delay", "timeout"]),
    ("log", &["format", "level", "access"]),
    (
        "telemetry",
        &["otlp_endpoint", "service_name", "sample_ratio"],
    ),
];

/// The keys of section `path` (`""` for the top level), when it is a section.
pub fn keys_of(path: &str) -> Option<&'static [&'static str]> {
    KEYS.iter().find(|(p, _)| *p == path).map(|(_, k)| *k)
}
