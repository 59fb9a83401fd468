//! OpenTelemetry traces (`telemetry.otlp_endpoint`; off by default).
//!
//! With an endpoint, every request gets a server span (the parent taken from the client's
//! W3C `traceparent`/`tracestate` when sent), with children for the TLS handshake (on a
//! connection's first request), the revocation and reset decision (protected routes) and
//! the upstream call, whose context is sent to the application as its `traceparent`.
//! Spans are batched and sent over OTLP/HTTP (protobuf) by the `opentelemetry` crates.
//!
//! Without an endpoint nothing here runs: no span is made, no trace is started, and a
//! client's `traceparent` and `tracestate` reach the application unchanged.
//!
//! Only what the access log holds is exported: method, path without the query, host,
//! protocol, TLS version, decision, status, account and certificate serial.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

use crate::config::TelemetryConfig;

/// The exporter of this process, once [`start`] ran with an endpoint.
static ACTIVE: OnceLock<Telemetry> = OnceLock::new();

/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last spans may take to leave at shutdown.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    endpoint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp_endpoint {0}: {1}")]
    Exporter(String, String),
    #[error("telemetry.otlp_endpoint: TLS roots: {0}")]
    Tls(std::io::Error),
}

/// Starts exporting when `cfg` names an endpoint (a no-op otherwise, and after the first
/// call). Must run inside the Tokio runtime: the exporter's HTTP calls run on it.
pub fn start(cfg: &TelemetryConfig) -> Result<(), TelemetryError> {
    let Some(endpoint) = &cfg.otlp_endpoint else {
        return Ok(());
    };
    if ACTIVE.get().is_some() {
        return Ok(());
    }
    let endpoint = endpoint.to_string();
    let client = RuntimeClient::new(EXPORT_TIMEOUT, endpoint.starts_with("https:"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError::Exporter(endpoint.clone(), e.to_string()))?;
    // OTEL_BSP_* in the environment tune the batches (the SDK reads them here).
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().build())
        .build();
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(cfg.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    use opentelemetry::trace::TracerProvider as _;
    let tracer = provider.tracer("certgate");
    let telemetry = Telemetry {
        provider,
        tracer,
        propagator: TraceContextPropagator::new(),
        endpoint,
    };
    tracing::info!(endpoint = %telemetry.endpoint, sample_ratio = cfg.sample_ratio, "exporting traces over OTLP/HTTP");
    let _ = ACTIVE.set(telemetry);
    Ok(())
}

/// The running exporter, when `telemetry.otlp_endpoint` is set.
#[inline]
pub fn get() -> Option<&'static Telemetry> {
    ACTIVE.get()
}

/// Sends the spans still queued (bounded by a few seconds). Blocks: call it off the
/// runtime's worker threads (`spawn_blocking`).
pub fn shutdown() {
    if let Some(t) = ACTIVE.get()
        && let Err(e) = t.provider.shutdown_with_timeout(SHUTDOWN_FLUSH)
    {
        tracing::warn!(endpoint = %t.endpoint, error = %e, "the last spans could not be exported");
    }
}

/// What a request span records at its start.
pub struct RequestStart<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub version: http::Version,
    pub peer: std::net::SocketAddr,
    pub tls_version: &'static str,
    pub user_agent: Option<&'a str>,
}

/// The handshake of a connection, timed by the connection.
#[derive(Debug, Clone, Copy)]
pub struct Handshake {
    pub start: SystemTime,
    pub end: SystemTime,
}

impl Telemetry {
    /// The server span of one request, a child of the client's `traceparent` when valid.
    pub fn request(&'static self, headers: &HeaderMap, r: &RequestStart<'_>) -> RequestTrace {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let mut span = self
            .tracer
            .span_builder(method_name(r.method))
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        // A span the sampler left out is not recorded: its attributes are never built.
        if !span.is_recording() {
            return RequestTrace {
                telemetry: self,
                cx: parent.with_span(span),
            };
        }
        let mut attributes = vec![
            KeyValue::new("http.request.method", r.method.as_str().to_string()),
            KeyValue::new("url.scheme", "https"),
            KeyValue::new("url.path", r.path.to_string()),
            KeyValue::new("network.protocol.version", protocol_version(r.version)),
            KeyValue::new("client.address", r.peer.ip().to_string()),
            KeyValue::new(
                "tls.protocol.version",
                r.tls_version.trim_start_matches("TLSv"),
            ),
        ];
        if let Some(h) = r.host {
            attributes.push(KeyValue::new("server.address", h.to_string()));
        }
        if let Some(ua) = r.user_agent {
            attributes.push(KeyValue::new("user_agent.original", ua.to_string()));
        }
        span.set_attributes(attributes);
        RequestTrace {
            telemetry: self,
            cx: parent.with_span(span),
        }
    }
}

/// The spans of one request. Ends with [`RequestTrace::finish`] (or when dropped).
pub struct RequestTrace {
    telemetry: &'static Telemetry,
    cx: Context,
}

impl RequestTrace {
    /// Records the connection's TLS handshake as a child span (its first request only).
    pub fn handshake(&self, h: Handshake, sni: Option<&str>, client_certificate: bool) {
        if !self.cx.span().is_recording() {
            return;
        }
        let mut attributes = vec![KeyValue::new(
            "certgate.client_certificate",
            client_certificate,
        )];
        if let Some(sni) = sni {
            attributes.push(KeyValue::new("tls.server.name", sni.to_string()));
        }
        let t = &self.telemetry.tracer;
        let mut span = t
            .span_builder("tls handshake")
            .with_kind(SpanKind::Internal)
            .with_start_time(h.start)
            .with_attributes(attributes)
            .start_with_context(t, &self.cx);
        span.end_with_timestamp(h.end);
    }

    /// A child span around the revocation and reset decision.
    pub fn decision(&self) -> ChildSpan {
        let t = &self.telemetry.tracer;
        ChildSpan(
            t.span_builder("decision")
                .with_kind(SpanKind::Internal)
                .start_with_context(t, &self.cx),
        )
    }

    /// A client span around the upstream call; its context replaces the client's
    /// `traceparent` (and `tracestate`) in `headers`, the request to the application.
    pub fn upstream(&self, method: &http::Method, headers: &mut HeaderMap) -> UpstreamSpan {
        let t = &self.telemetry.tracer;
        let mut span = t
            .span_builder(method_name(method))
            .with_kind(SpanKind::Client)
            .start_with_context(t, &self.cx);
        if span.is_recording() {
            span.set_attribute(KeyValue::new("http.request.method", method_name(method)));
        }
        let cx = self.cx.with_span(span);
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        self.telemetry
            .propagator
            .inject_context(&cx, &mut HeaderInjector(headers));
        UpstreamSpan(cx)
    }

    /// Ends the request span with what was decided and answered.
    pub fn finish(self, decision: &'static str, status: u16, who: Option<(&str, Option<&str>)>) {
        let span = self.cx.span();
        if !span.is_recording() {
            span.end();
            return;
        }
        span.set_attribute(KeyValue::new("certgate.decision", decision));
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some((serial, account)) = who {
            span.set_attribute(KeyValue::new("certgate.serial", serial.to_string()));
            if let Some(a) = account {
                span.set_attribute(KeyValue::new("certgate.account", a.to_string()));
            }
        }
        if status >= 500 {
            span.set_status(Status::error(format!("HTTP {status}")));
        }
        span.end();
    }
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// An internal child span; [`ChildSpan::end`] records the outcome.
pub struct ChildSpan(opentelemetry_sdk::trace::Span);

impl ChildSpan {
    pub fn end(mut self, outcome: &'static str) {
        self.0
            .set_attribute(KeyValue::new("certgate.decision", outcome));
        self.0.end();
    }
}

/// The upstream call's span.
pub struct UpstreamSpan(Context);

impl UpstreamSpan {
    /// Ends it with the application's status, or the reason there was none.
    pub fn end(self, result: Result<u16, &'static str>) {
        let span = self.0.span();
        match result {
            Ok(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if status >= 500 {
                    span.set_status(Status::error(format!("HTTP {status}")));
                }
            }
            Err(kind) => {
                span.set_attribute(KeyValue::new("error.type", kind));
                span.set_status(Status::error(kind));
            }
        }
        span.end();
    }
}

/// The method as a span name, without an allocation for the standard methods.
fn method_name(m: &http::Method) -> std::borrow::Cow<'static, str> {
    const NAMES: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match NAMES.iter().find(|n| **n == m.as_str()) {
        Some(n) => std::borrow::Cow::Borrowed(n),
        None => std::borrow::Cow::Owned(m.as_str().to_string()),
    }
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    }
}

type HttpsClient = opentelemetry_http::hyper::HyperClient<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
>;

/// The exporter's HTTP client: hyper (over rustls for https), its calls spawned onto the
/// Tokio runtime that was current at start-up, since the SDK's batch thread has none.
#[derive(Debug, Clone)]
struct RuntimeClient {
    inner: HttpsClient,
    runtime: tokio::runtime::Handle,
}

impl RuntimeClient {
    fn new(timeout: Duration, https: bool) -> Result<Self, TelemetryError> {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let builder = crate::tls::client_tls(https).map_err(TelemetryError::Tls)?;
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        Ok(RuntimeClient {
            inner: opentelemetry_http::hyper::HyperClient::new(connector, timeout, None),
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

impl HttpClient for RuntimeClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let inner = self.inner.clone();
        let task = self
            .runtime
            .spawn(async move { inner.send_bytes(request).await });
        Box::pin(async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(Box::new(e) as HttpError),
            }
        })
    }
}
