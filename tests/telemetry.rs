//! OpenTelemetry as an operator would see it: the real binary with `telemetry.otlp_endpoint`
//! pointed at this test's own OTLP/HTTP receiver, spans decoded from what it was sent, and
//! the `traceparent` the application received. Without an endpoint, a client's trace
//! headers reach the application unchanged and nothing is exported.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use support::process::start;
use support::{Echo, Harness, Options, Prepared, get};

/// One POST the collector received: path, content type, body.
type Export = (String, String, Vec<u8>);

/// A minimal OTLP/HTTP collector: answers every POST with 200 and keeps what it got.
struct Collector {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Export>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Export>>> = Arc::default();
        let keep = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let keep = keep.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let keep = keep.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let ct = req
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string();
                                let body = req.into_body().collect().await?.to_bytes().to_vec();
                                keep.lock().unwrap().push((path, ct, body));
                                Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::new())))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Collector { addr, got }
    }

    /// Every span received, with the `service.name` of its resource.
    fn spans(&self) -> Vec<(String, Span)> {
        let mut out = Vec::new();
        for (path, ct, body) in self.got.lock().unwrap().iter() {
            assert_eq!(path, "/v1/traces", "OTLP/HTTP traces path");
            assert_eq!(ct, "application/x-protobuf", "OTLP/HTTP protobuf");
            let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
            for rs in req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| attr(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        out.push((service.clone(), span));
                    }
                }
            }
        }
        out
    }
}

/// A string, integer or boolean attribute as text.
fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match v.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn echo_of(body: &[u8]) -> Echo {
    Echo::parse(body)
}

/// The real binary with `telemetry` pointed at `collector` plus `more` keys of that section.
async fn traced(collector: &Collector, more: &str) -> (Prepared, support::process::Running) {
    let p = Prepared::new(Options {
        extra: format!(
            "shutdown:\n  drain_delay: 0s\ntelemetry:\n  otlp_endpoint: http://{}\n{more}",
            collector.addr
        ),
        ..Options::default()
    })
    .await;
    let gw = start(&p);
    (p, gw)
}

/// An HTTP/1.1 client of `gw` trusting the server CA, with `identity` when given.
fn client_of(
    p: &Prepared,
    gw: &support::process::Running,
    identity: Option<reqwest::Identity>,
) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(p.pki.server_ca.cert_pem.as_bytes()).unwrap();
    let b = reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve("localhost", gw.listen)
        .no_proxy()
        .http1_only();
    match identity {
        Some(i) => b.identity(i),
        None => b,
    }
    .build()
    .unwrap()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_and_the_app_continues_the_trace() {
    let collector = Collector::start().await;
    let (p, mut gw) = traced(&collector, "  service_name: gate-under-test\n").await;
    let alice = p.pki.client("alice");
    let base = format!("https://localhost:{}", gw.listen.port());
    let with_cert = client_of(&p, &gw, Some(alice.reqwest_identity()));

    // 1. A caller's trace: the first request of alice's connection.
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let r = get(
        &with_cert,
        &format!("{base}/app/orders?token=secret-value"),
        &[
            ("traceparent", traceparent.as_str()),
            ("tracestate", "vendor=opaque"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = echo_of(&r.body);
    let sent = first.one("traceparent");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent sent to the app: {sent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], TRACE_ID, "the app continues the caller's trace");
    assert_ne!(parts[2], PARENT_ID, "the app's parent is certgate's span");
    assert_eq!(parts[3], "01", "sampled, as the caller said");
    assert_eq!(first.one("tracestate"), "vendor=opaque");
    let upstream_span_id = parts[2].to_string();

    // 2. The same connection, no traceparent: a new trace, no second handshake span.
    let r = get(&with_cert, &format!("{base}/app/second"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let second = echo_of(&r.body);
    let second_trace = second.one("traceparent");
    assert!(
        !second_trace.contains(TRACE_ID),
        "a request without traceparent starts its own trace: {second_trace}"
    );

    // 3. Refused: no certificate on a protected path.
    let r = get(
        &client_of(&p, &gw, None),
        &format!("{base}/app/denied"),
        &[],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());

    // SIGTERM: the last spans are flushed before the process exits.
    gw.signal(libc::SIGTERM);
    assert_eq!(
        gw.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        gw.log()
    );

    let spans = collector.spans();
    assert!(
        spans.iter().all(|(svc, _)| svc == "gate-under-test"),
        "service.name from telemetry.service_name"
    );
    let by_id: HashMap<String, &Span> = spans.iter().map(|(_, s)| (hex(&s.span_id), s)).collect();
    let server: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    let path_of = |s: &Span| attr(&s.attributes, "url.path").unwrap_or_default();
    let find = |path: &str| {
        *server
            .iter()
            .find(|s| path_of(s) == path)
            .unwrap_or_else(|| {
                panic!(
                    "no server span for {path}; spans: {:?}",
                    spans
                        .iter()
                        .map(|(_, s)| (&s.name, path_of(s)))
                        .collect::<Vec<_>>()
                )
            })
    };
    let children = |parent: &Span| -> Vec<&Span> {
        spans
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.parent_span_id == parent.span_id)
            .collect()
    };

    // The caller's trace: server span under the caller's span, query never exported.
    let req1 = find("/app/orders");
    assert_eq!(hex(&req1.trace_id), TRACE_ID);
    assert_eq!(hex(&req1.parent_span_id), PARENT_ID);
    assert_eq!(req1.name, "GET");
    let a = |s: &Span, k: &str| attr(&s.attributes, k);
    assert_eq!(a(req1, "certgate.decision").as_deref(), Some("allowed"));
    assert_eq!(a(req1, "certgate.account").as_deref(), Some("alice"));
    assert_eq!(a(req1, "certgate.serial"), Some(alice.serial.clone()));
    assert_eq!(a(req1, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(a(req1, "tls.protocol.version").as_deref(), Some("1.3"));
    assert_eq!(a(req1, "network.protocol.version").as_deref(), Some("1.1"));
    for (_, s) in &spans {
        for kv in &s.attributes {
            let v = format!("{:?}", kv.value);
            assert!(
                !v.contains("secret-value"),
                "the query was exported: {kv:?}"
            );
        }
    }
    let kids = children(req1);
    let names: Vec<&str> = kids.iter().map(|s| s.name.as_str()).collect();
    let handshake = kids
        .iter()
        .find(|s| s.name == "tls handshake")
        .unwrap_or_else(|| panic!("no handshake span under the first request: {names:?}"));
    assert!(handshake.end_time_unix_nano >= handshake.start_time_unix_nano);
    assert!(
        handshake.end_time_unix_nano <= req1.start_time_unix_nano,
        "the handshake ends before its first request starts"
    );
    assert_eq!(
        a(handshake, "certgate.client_certificate").as_deref(),
        Some("true")
    );
    let decision = kids
        .iter()
        .find(|s| s.name == "decision")
        .unwrap_or_else(|| panic!("no decision span: {names:?}"));
    assert_eq!(a(decision, "certgate.decision").as_deref(), Some("allowed"));
    let upstream = by_id
        .get(&upstream_span_id)
        .unwrap_or_else(|| panic!("the app's parent span {upstream_span_id} was not exported"));
    assert_eq!(upstream.kind, SpanKind::Client as i32);
    assert_eq!(upstream.parent_span_id, req1.span_id);
    assert_eq!(
        a(upstream, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(
        decision.end_time_unix_nano <= upstream.start_time_unix_nano,
        "decided before forwarding"
    );

    // The second request: its own root trace, and the handshake counted once.
    let req2 = find("/app/second");
    assert!(req2.parent_span_id.is_empty(), "a root span");
    assert_ne!(hex(&req2.trace_id), TRACE_ID);
    assert!(second_trace.contains(&hex(&req2.trace_id)));
    assert!(
        children(req2).iter().all(|s| s.name != "tls handshake"),
        "one handshake span per connection"
    );
    assert_eq!(
        spans
            .iter()
            .filter(|(_, s)| s.name == "tls handshake")
            .count(),
        2,
        "two connections (alice's and the one without a certificate)"
    );

    // The refusal: recorded, never forwarded.
    let denied = find("/app/denied");
    assert_eq!(
        a(denied, "http.response.status_code").as_deref(),
        Some("403")
    );
    assert_eq!(a(denied, "certgate.decision").as_deref(), Some("no_cert"));
    assert!(
        children(denied)
            .iter()
            .all(|s| s.kind != SpanKind::Client as i32),
        "a refused request has no upstream span"
    );
}

#[tokio::test]
async fn without_an_endpoint_trace_headers_pass_through_unchanged() {
    let h = Harness::start().await;
    let alice = h.pki.client("alice");
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    for client in [h.client_h1(Some(&alice)), h.client(Some(&alice))] {
        let r = get(
            &client,
            &h.url("/app"),
            &[
                ("traceparent", traceparent.as_str()),
                ("tracestate", "vendor=opaque"),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = echo_of(&r.body);
        assert_eq!(echo.one("traceparent"), traceparent);
        assert_eq!(echo.one("tracestate"), "vendor=opaque");
        // And no trace is started for a request without one.
        let r = get(&client, &h.url("/app"), &[]).await;
        assert!(!echo_of(&r.body).has("traceparent"));
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_ratio_zero_records_only_what_the_caller_sampled() {
    let collector = Collector::start().await;
    let (p, mut gw) = traced(&collector, "  sample_ratio: 0\n").await;
    let alice = p.pki.client("alice");
    let client = client_of(&p, &gw, Some(alice.reqwest_identity()));
    let base = format!("https://localhost:{}", gw.listen.port());

    // Not sampled: the app still gets a traceparent (flags 00), nothing is exported.
    let r = get(&client, &format!("{base}/app/unsampled"), &[]).await;
    let sent = echo_of(&r.body).one("traceparent");
    assert!(
        sent.ends_with("-00"),
        "an unsampled trace is still propagated: {sent}"
    );
    // The caller sampled it: recorded whatever the ratio (parent-based).
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let r = get(
        &client,
        &format!("{base}/app/sampled"),
        &[("traceparent", traceparent.as_str())],
    )
    .await;
    let sent = echo_of(&r.body).one("traceparent");
    assert!(
        sent.starts_with(&format!("00-{TRACE_ID}-")) && sent.ends_with("-01"),
        "{sent}"
    );

    gw.signal(libc::SIGTERM);
    assert_eq!(
        gw.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        gw.log()
    );
    let spans = collector.spans();
    assert!(!spans.is_empty(), "the caller's sampled trace is exported");
    for (_, s) in &spans {
        assert_eq!(
            hex(&s.trace_id),
            TRACE_ID,
            "only the sampled trace: {}",
            s.name
        );
    }
    assert!(
        spans
            .iter()
            .any(|(_, s)| attr(&s.attributes, "url.path").as_deref() == Some("/app/sampled"))
    );
}
