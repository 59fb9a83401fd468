//! Connections: accept ([`listener`]) → PROXY header when configured ([`proxy_protocol`]) →
//! TLS handshake → HTTP/1.1 or HTTP/2 chosen from the negotiated ALPN, never by sniffing
//! bytes, which would wait forever on a silent client ([`conn`]) → every request through
//! `proxy`. A per-connection [`watchdog`] enforces the header read timeout, the idle
//! timeout and the maximum connection age without a timer per request.
//!
//! [`plain`] serves the admin and metrics listeners (HTTP/1.1 without TLS).
//!
//! `app` builds the [`Runtime`] of a configuration and owns the [`Server`]; a reload swaps
//! the runtime whole, so new handshakes and new requests of open connections use it.

pub mod budget;
pub mod conn;
pub mod h2frames;
pub mod listener;
pub mod outbound;
pub mod plain;
pub mod proxy_protocol;
pub mod watchdog;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::enroll::Enrollment;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::tls::TlsMaterial;

pub use crate::core::phase::{LameDuck, Phase};

/// Everything a configuration determines that can change without a restart: the TLS
/// material (certificates, CAs, CRLs, a new session-ticket key), the proxy (upstream,
/// routes, headers, enrollment endpoints) and the per-connection limits. Swapped whole.
pub struct Runtime {
    pub proxy: Arc<Proxy>,
    /// certgate's own endpoints (also held by `proxy`); kept here so the next
    /// configuration can carry over what must survive a reload (the CRL number).
    pub enrollment: Arc<Enrollment>,
    pub material: Arc<TlsMaterial>,
    pub limits: ConnLimits,
}

/// The per-connection limits of one configuration.
#[derive(Clone, Copy)]
pub struct ConnLimits {
    /// `listen_proxy_protocol`: read a PROXY header before the TLS handshake.
    pub proxy_protocol: bool,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_age: Option<Duration>,
    pub max_header_bytes: usize,
    pub h2_streams: u32,
    /// A connection whose responses have data the client has not taken for this long
    /// is dropped ([`outbound`]).
    pub send_timeout: Duration,
    /// HTTP/2 SETTINGS, PING, PRIORITY, WINDOW_UPDATE and empty DATA frames a client may
    /// send per second (0 = no limit).
    pub h2_control_frames_per_second: u32,
}

impl ConnLimits {
    pub fn from_config(cfg: &Config) -> Self {
        ConnLimits {
            proxy_protocol: cfg.listen_proxy_protocol,
            handshake_timeout: cfg.limits.handshake_timeout,
            header_read_timeout: cfg.limits.header_read_timeout,
            idle_timeout: cfg.limits.idle_timeout,
            max_age: cfg.limits.max_connection_age,
            max_header_bytes: cfg.limits.max_header_bytes,
            h2_streams: cfg.limits.h2_max_concurrent_streams,
            send_timeout: cfg.limits.send_timeout,
            h2_control_frames_per_second: cfg.limits.h2_control_frames_per_second,
        }
    }
}

/// The gateway's connection side: the runtime of the applied configuration and the
/// metrics every connection reports to.
pub struct Server {
    /// Swapped whole by a reload; read once per connection (TLS, limits) and once per
    /// request (proxy).
    pub current: ArcSwap<Runtime>,
    pub metrics: Metrics,
    /// `limits.response_buffer`: response bytes buffered in all connections together.
    pub responses: Arc<budget::Budget>,
    /// The open connections with a client certificate.
    pub live: Arc<crate::live::Registry>,
    /// Set in the lame-duck phase: each request asks its connection to close after it.
    pub lame: Arc<LameDuck>,
}
