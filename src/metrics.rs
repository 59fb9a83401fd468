//! Every Prometheus metric certgate exports: names live here and nowhere else.
//!
//! One [`Metrics`] value holds the handles; it is built once by `app`, registered in one
//! registry, and passed (cloned: the handles are `Arc`s inside) to whoever counts. The
//! `/metrics` endpoint that encodes it is served by `admin`.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::decision::{CloseReason, Decision};
use crate::core::flood::FloodKind;

/// Metric names, without the `_total` suffix prometheus-client appends to counters.
pub mod names {
    pub const BUILD_INFO: &str = "certgate_build_info";
    pub const REQUESTS: &str = "certgate_requests";
    pub const REQUEST_DURATION: &str = "certgate_request_duration_seconds";
    pub const UPSTREAM_DURATION: &str = "certgate_upstream_duration_seconds";
    pub const UPSTREAM_ERRORS: &str = "certgate_upstream_errors";
    pub const TLS_HANDSHAKES: &str = "certgate_tls_handshakes";
    pub const CONNECTIONS_ACTIVE: &str = "certgate_connections_active";
    pub const CONNECTIONS_REFUSED: &str = "certgate_connections_refused";
    pub const CONNECTIONS_CLOSED: &str = "certgate_connections_closed";
    pub const H2_ABUSE: &str = "certgate_h2_abuse";
    pub const STATE_CACHE: &str = "certgate_state_cache";
    pub const STATE_STORE_ERRORS: &str = "certgate_state_store_errors";
    pub const STATE_STORE_UP: &str = "certgate_state_store_up";
    pub const STATE_STORE_OUTAGES: &str = "certgate_state_store_outages";
    pub const STATE_STORE_DATA_LOST: &str = "certgate_state_store_data_lost";
    pub const STATE_STORE_DATA_LOSS_EVENTS: &str = "certgate_state_store_data_loss_events";
    pub const ENROLLMENTS: &str = "certgate_enrollments";
    pub const CONFIG_RELOADS: &str = "certgate_config_reloads";
    pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "certgate_config_last_reload_success";
    pub const CLIENT_CERT_NOT_AFTER: &str = "certgate_client_cert_not_after_seconds";
    pub const CRL_NEXT_UPDATE: &str = "certgate_crl_next_update_seconds";
    pub const CERTIFICATE_NOT_AFTER: &str = "certgate_certificate_not_after_seconds";
    pub const ADMIN_REQUESTS: &str = "certgate_admin_requests";
    pub const HTTP_REQUESTS: &str = "certgate_http_requests";
    pub const HTTP_REQUEST_DURATION: &str = "certgate_http_request_duration_seconds";
}

/// The per-request decision, also the `decision` label and the refusal's `error` token.
/// The decision label is the decision's own token ([`Decision::as_str`]).
impl EncodeLabelValue for Decision {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl EncodeLabelValue for CloseReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl EncodeLabelValue for FloodKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// `certificate`: `server` (the leaf of `tls.cert`) or `enrollment_ca`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub certificate: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfoLabels {
    pub version: &'static str,
    pub commit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct H2AbuseLabels {
    pub kind: FloodKind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionsClosedLabels {
    pub reason: CloseReason,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: Decision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum UpstreamErrorKind {
    connect,
    timeout,
    protocol,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub kind: UpstreamErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HandshakeResult {
    ok,
    failed,
    timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Resumed {
    yes,
    no,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub result: HandshakeResult,
    pub resumed: Resumed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CacheResult {
    hit,
    miss,
    stale,
    error,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub result: CacheResult,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    success,
    failure,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub result: Outcome,
}

/// `certgate_http_requests_total` and its duration: by method (the common ones, else
/// `other`) and status class.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    pub status_class: &'static str,
}

const HTTP_METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::PATCH => 4,
        http::Method::HEAD => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

fn http_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminLabels {
    pub route: &'static str,
    pub status: u16,
}

/// Handles to every metric. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<DecisionLabels, Counter>,
    /// `requests` by decision, resolved once: counting a request is one atomic add, not a
    /// lock and a hash lookup in the family.
    decisions: Arc<[Counter; Decision::ALL.len()]>,
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    pub connections_active: Gauge,
    pub connections_refused: Counter,
    /// Open connections closed because their certificate was revoked, reset, expired or
    /// an operator asked.
    pub connections_closed: Family<ConnectionsClosedLabels, Counter>,
    /// HTTP/2 connections closed with GOAWAY ENHANCE_YOUR_CALM for a control-frame flood.
    pub h2_abuse: Family<H2AbuseLabels, Counter>,
    pub state_cache: Family<CacheLabels, Counter>,
    pub state_store_errors: Counter,
    pub state_store_up: Gauge,
    /// 1 while the Redis backend refuses every call because its data appears lost.
    pub state_store_data_lost: Gauge,
    pub state_store_data_loss_events: Counter,
    /// Outages: a failed store call after a successful one.
    pub state_store_outages: Counter,
    pub enrollments: Family<OutcomeLabels, Counter>,
    pub config_reloads: Family<OutcomeLabels, Counter>,
    pub config_last_reload_success: Gauge,
    pub client_cert_not_after: Histogram,
    pub crl_next_update: Gauge,
    /// Unix time of `notAfter` of the server certificate and of the enrollment CA.
    pub certificate_not_after: Family<CertificateLabels, Gauge>,
    pub admin_requests: Family<AdminLabels, Counter>,
    /// `[method][status class]`, every one present from the start.
    http_requests: Arc<[[Counter; 5]; 8]>,
    http_request_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    /// Handles into `http_request_duration`, each made on its first request (a series
    /// appears once it has data), so a request takes no lock or hash.
    http_durations: Arc<[[std::sync::OnceLock<Histogram>; 5]; 8]>,
    registry: Arc<Registry>,
}

impl Metrics {
    /// Builds every handle and registers it in a fresh registry.
    pub fn new() -> Self {
        use names::*;
        let mut r = Registry::default();
        crate::process::mark_start();
        r.register_collector(Box::new(crate::process::ProcessCollector));
        let build_info = Family::<BuildInfoLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildInfoLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("CERTGATE_COMMIT"),
            })
            .set(1);
        r.register(
            BUILD_INFO,
            "The running build: 1, labelled with its version and commit",
            build_info,
        );
        let requests = Family::<DecisionLabels, Counter>::default();
        r.register(REQUESTS, "Requests by gate decision", requests.clone());
        let request_duration = register(
            &mut r,
            REQUEST_DURATION,
            "Time from request head to response head",
            Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
        );
        let upstream_duration = register(
            &mut r,
            UPSTREAM_DURATION,
            "Time waiting for the upstream's response head",
            Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
        );
        let upstream_errors = register(
            &mut r,
            UPSTREAM_ERRORS,
            "Upstream failures by kind",
            Family::<UpstreamErrorLabels, Counter>::default(),
        );
        let tls_handshakes = register(
            &mut r,
            TLS_HANDSHAKES,
            "TLS handshakes by result",
            Family::<HandshakeLabels, Counter>::default(),
        );
        let connections_active = register(
            &mut r,
            CONNECTIONS_ACTIVE,
            "Open client connections",
            Gauge::default(),
        );
        let connections_refused = register(
            &mut r,
            CONNECTIONS_REFUSED,
            "Connections closed at once because limits.max_connections was reached",
            Counter::default(),
        );
        let connections_closed = register(
            &mut r,
            CONNECTIONS_CLOSED,
            "Open connections closed because their certificate was revoked, its account reset, \
             it expired, or an operator asked",
            Family::<ConnectionsClosedLabels, Counter>::default(),
        );
        let h2_abuse = register(
            &mut r,
            H2_ABUSE,
            "HTTP/2 connections closed (GOAWAY ENHANCE_YOUR_CALM) for sending more control \
             frames than limits.h2_control_frames_per_second, by frame kind",
            Family::<H2AbuseLabels, Counter>::default(),
        );
        for kind in FloodKind::ALL {
            let _ = h2_abuse.get_or_create(&H2AbuseLabels { kind });
        }
        let state_cache = register(
            &mut r,
            STATE_CACHE,
            "State cache lookups by result",
            Family::<CacheLabels, Counter>::default(),
        );
        let state_store_errors = register(
            &mut r,
            STATE_STORE_ERRORS,
            "Failed state store calls",
            Counter::default(),
        );
        let state_store_up = register(
            &mut r,
            STATE_STORE_UP,
            "1 when the last state store call succeeded",
            Gauge::default(),
        );
        let state_store_outages = register(
            &mut r,
            STATE_STORE_OUTAGES,
            "State store outages begun (a failed call after a successful one)",
            Counter::default(),
        );
        let state_store_data_lost = register(
            &mut r,
            STATE_STORE_DATA_LOST,
            "1 while the state store refuses every call because its data appears lost (see README, Redis)",
            Gauge::default(),
        );
        let state_store_data_loss_events = register(
            &mut r,
            STATE_STORE_DATA_LOSS_EVENTS,
            "Times the state store was found to have lost its data",
            Counter::default(),
        );
        let enrollments = register(
            &mut r,
            ENROLLMENTS,
            "Enrollment attempts by result",
            Family::<OutcomeLabels, Counter>::default(),
        );
        let config_reloads = register(
            &mut r,
            CONFIG_RELOADS,
            "Configuration reloads by result",
            Family::<OutcomeLabels, Counter>::default(),
        );
        let config_last_reload_success = register(
            &mut r,
            CONFIG_LAST_RELOAD_SUCCESS,
            "1 when the last configuration (re)load succeeded",
            Gauge::default(),
        );
        let client_cert_not_after = register(
            &mut r,
            CLIENT_CERT_NOT_AFTER,
            "Remaining lifetime of client certificates seen at the handshake",
            Histogram::new([
                3600.0, 86400.0, 604800.0, 2592000.0, 7776000.0, 15552000.0, 31536000.0, 63072000.0,
            ]),
        );
        let crl_next_update = register(
            &mut r,
            CRL_NEXT_UPDATE,
            "Unix time of the earliest nextUpdate of the configured CRLs (0: no CRL configured)",
            Gauge::default(),
        );
        let certificate_not_after = Family::<CertificateLabels, Gauge>::default();
        r.register(
            CERTIFICATE_NOT_AFTER,
            "Unix time of notAfter of the server certificate (certificate=\"server\") and of the \
             enrollment CA (certificate=\"enrollment_ca\", absent when enrollment is off)",
            certificate_not_after.clone(),
        );
        let admin_requests = Family::<AdminLabels, Counter>::default();
        r.register(ADMIN_REQUESTS, "Admin API requests", admin_requests.clone());
        let http_family = Family::<HttpLabels, Counter>::default();
        r.register(
            HTTP_REQUESTS,
            "Data-plane requests by method and status class",
            http_family.clone(),
        );
        let http_requests = Arc::new(HTTP_METHODS.map(|method| {
            STATUS_CLASSES.map(|status_class| {
                http_family
                    .get_or_create(&HttpLabels {
                        method,
                        status_class,
                    })
                    .clone()
            })
        }));
        let http_request_duration =
            Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                http_histogram,
            );
        r.register(
            HTTP_REQUEST_DURATION,
            "Data-plane request duration (request head to response head) by method and status class",
            http_request_duration.clone(),
        );
        let decisions = Arc::new(
            Decision::ALL
                .map(|decision| requests.get_or_create(&DecisionLabels { decision }).clone()),
        );
        Metrics {
            requests,
            decisions,
            request_duration,
            upstream_duration,
            upstream_errors,
            tls_handshakes,
            connections_active,
            connections_refused,
            connections_closed,
            h2_abuse,
            state_cache,
            state_store_errors,
            state_store_up,
            state_store_outages,
            state_store_data_lost,
            state_store_data_loss_events,
            enrollments,
            config_reloads,
            config_last_reload_success,
            client_cert_not_after,
            crl_next_update,
            certificate_not_after,
            admin_requests,
            http_requests,
            http_request_duration,
            http_durations: Arc::default(),
            registry: Arc::new(r),
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn count_h2_abuse(&self, kind: FloodKind) {
        self.h2_abuse.get_or_create(&H2AbuseLabels { kind }).inc();
    }

    /// One data-plane request: `certgate_http_requests_total` and its duration.
    pub fn count_http(&self, method: &http::Method, status: u16, seconds: f64) {
        let m = method_index(method);
        let c = usize::from(status / 100).clamp(1, 5) - 1;
        self.http_requests[m][c].inc();
        self.http_durations[m][c]
            .get_or_init(|| {
                self.http_request_duration
                    .get_or_create(&HttpLabels {
                        method: HTTP_METHODS[m],
                        status_class: STATUS_CLASSES[c],
                    })
                    .clone()
            })
            .observe(seconds);
    }

    pub fn count_decision(&self, decision: Decision) {
        self.decisions[decision as usize].inc();
    }

    pub fn count_cache(&self, result: CacheResult) {
        self.state_cache
            .get_or_create(&CacheLabels { result })
            .inc();
    }
}

/// Registers `metric` under `name` and hands it back (the registry keeps a clone).
fn register<M>(r: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    r.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_requests_by_method_and_status_class() {
        let m = Metrics::new();
        m.count_http(&http::Method::GET, 200, 0.001);
        m.count_http(&http::Method::GET, 204, 0.002);
        m.count_http(&http::Method::from_bytes(b"PROPFIND").unwrap(), 503, 0.003);
        let text = m.encode();
        for want in [
            "certgate_http_requests_total{method=\"GET\",status_class=\"2xx\"} 2",
            "certgate_http_requests_total{method=\"other\",status_class=\"5xx\"} 1",
            // Present at 0 from the start.
            "certgate_http_requests_total{method=\"POST\",status_class=\"4xx\"} 0",
            "certgate_http_request_duration_seconds_count{method=\"GET\",status_class=\"2xx\"} 2",
            "certgate_http_request_duration_seconds_count{method=\"other\",status_class=\"5xx\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }

    #[test]
    fn names_are_exported_with_design_names() {
        let m = Metrics::new();
        m.count_decision(Decision::Revoked);
        m.count_cache(CacheResult::hit);
        m.tls_handshakes
            .get_or_create(&HandshakeLabels {
                result: HandshakeResult::ok,
                resumed: Resumed::yes,
            })
            .inc();
        let text = m.encode();
        for d in Decision::ALL {
            assert_eq!(Decision::ALL[d as usize], d, "ALL is in declaration order");
        }
        assert!(
            text.contains("certgate_requests_total{decision=\"revoked\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("certgate_state_cache_total{result=\"hit\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("certgate_tls_handshakes_total{result=\"ok\",resumed=\"yes\"} 1"),
            "{text}"
        );
        assert!(text.contains("certgate_connections_active"), "{text}");
        assert!(text.contains("certgate_state_store_up"), "{text}");
    }
}
