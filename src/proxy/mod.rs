//! One request: strip client-sent identity headers, classify the path, ask `gate`,
//! inject certgate's identity headers, forward upstream with the pooled hyper client, and
//! stream the answer back. One map from failures to status codes ([`UpstreamError`] and
//! `pages`); details go to the log, never to the client.
//!
//! Neighbours: `tls` hands over the connection's identity, `state::cache` answers the
//! per-request state lookup, `gate` decides, `pages` renders refusals, `app` serves
//! connections and owns this value.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

mod access;
mod body;
mod session;
mod tunnel;

pub use self::tunnel::Slot;

pub use self::access::Pending;
use self::access::{RequestIds, Start, UpstreamInfo, Via, X_REQUEST_ID};
use self::body::{BAD_BODY, ClientBody};
use crate::config::{Config, Underscores};
use crate::core::decision::Decision;
use crate::core::gate::{self, Facts, Route};
use crate::core::identity::ClientIdentity;
use crate::core::outcome::Page;
use crate::enroll::Enrollment;
use crate::http::pages;
use crate::metrics::{Metrics, UpstreamErrorKind, UpstreamErrorLabels};
use crate::pki::assertion::AssertionSigner;
use crate::state::cache::StateCache;
use crate::tls::TlsMaterial;

/// Response body: the upstream's streamed body, or one certgate wrote itself.
pub type RespBody = Either<Incoming, Full<Bytes>>;

/// Per-connection facts, computed once after the handshake.
pub struct ConnInfo {
    /// The connection's place in `limits.max_connections` and `certgate_connections_active`
    /// (given up when the last holder is gone: an upgraded tunnel holds it too).
    pub slot: Slot,
    /// The shutdown phase: an upgraded tunnel closes when the drain begins.
    pub phase: tokio::sync::watch::Receiver<crate::core::phase::Phase>,
    pub identity: Option<Arc<ClientIdentity>>,
    pub peer: SocketAddr,
    /// Lower-case SNI, when sent.
    pub sni: Option<String>,
    /// The peer's IP as a header value (for `X-Forwarded-For`).
    pub peer_ip: HeaderValue,
    /// The connection's entry among the open connections with a certificate (closed when
    /// the certificate is revoked, reset or expires); an upgraded tunnel holds it too.
    pub live: Option<Arc<crate::live::LiveConn>>,
    /// `TLSv1.3` or `TLSv1.2`, for the access log.
    pub tls_version: &'static str,
    /// The last signed identity assertion of this connection, reused while fresh.
    assertion: std::sync::Mutex<Option<CachedAssertion>>,
    /// Set at the connection's first allowed request (a renewed certificate's first use).
    allowed_once: std::sync::atomic::AtomicBool,
    /// The TLS handshake's times, kept for the first request's trace (only while
    /// `telemetry.otlp_endpoint` is set).
    handshake: std::sync::Mutex<Option<Box<crate::telemetry::Handshake>>>,
}

/// An assertion kept for the requests of one connection.
struct CachedAssertion {
    value: HeaderValue,
    /// Re-signed from this time on (Unix seconds): half its lifetime, so the application
    /// never receives one about to expire.
    renew_at: i64,
    /// Which signer made it (a reload with a new key signs anew).
    signer: Arc<AssertionSigner>,
}

impl ConnInfo {
    fn holder(&self) -> session::Holder<'_> {
        session::Holder {
            identity: self.identity.as_deref(),
            peer: self.peer,
        }
    }

    pub fn new(
        slot: Slot,
        phase: tokio::sync::watch::Receiver<crate::core::phase::Phase>,
        identity: Option<Arc<ClientIdentity>>,
        peer: SocketAddr,
        sni: Option<String>,
    ) -> Self {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo {
            slot,
            phase,
            identity,
            peer,
            sni,
            peer_ip,
            live: None,
            tls_version: "-",
            assertion: std::sync::Mutex::new(None),
            handshake: std::sync::Mutex::new(None),
            allowed_once: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// True at the connection's first allowed request only.
    fn first_allowed(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        !self.allowed_once.load(Relaxed) && !self.allowed_once.swap(true, Relaxed)
    }

    /// The same connection, with its handshake's times for the first request's trace.
    pub fn with_handshake(self, h: Option<crate::telemetry::Handshake>) -> Self {
        *self.handshake.lock().unwrap_or_else(|p| p.into_inner()) = h.map(Box::new);
        self
    }

    /// The handshake's times, once (the connection's first traced request).
    fn take_handshake(&self) -> Option<crate::telemetry::Handshake> {
        let mut h = self.handshake.lock().unwrap_or_else(|p| p.into_inner());
        h.take().map(|b| *b)
    }

    pub fn with_tls_version(mut self, v: &'static str) -> Self {
        self.tls_version = v;
        self
    }

    /// The same connection, registered among the open connections.
    pub fn with_live(mut self, live: Option<Arc<crate::live::LiveConn>>) -> Self {
        self.live = live;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream TLS roots: {0}")]
    UpstreamTls(std::io::Error),
    #[error("upstream.url {0} has no host")]
    UpstreamUrl(String),
    #[error("headers.assertion.key_file {0}: {1}")]
    AssertionKey(String, crate::pki::assertion::AssertionError),
}

/// Why forwarding failed; mapped to 502/504 in one place ([`UpstreamError::page`]).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream connection failed: {0}")]
    Connect(String),
    #[error("upstream connection timed out")]
    ConnectTimeout,
    #[error("upstream did not answer within upstream.response_timeout")]
    ResponseTimeout,
    #[error("upstream protocol error: {0}")]
    Protocol(String),
}

const BAD_GATEWAY: Page = Page {
    status: StatusCode::BAD_GATEWAY,
    token: "bad_gateway",
    title: "Application unavailable",
    message: "The application behind the gateway could not be reached.",
    steps: &["Try again in a moment. If it persists, tell your administrator."],
};

const GATEWAY_TIMEOUT: Page = Page {
    status: StatusCode::GATEWAY_TIMEOUT,
    token: "gateway_timeout",
    title: "Application too slow",
    message: "The application behind the gateway did not answer in time.",
    steps: &["Try again in a moment. If it persists, tell your administrator."],
};

impl UpstreamError {
    /// What the client is told (the error itself goes to the log only).
    fn page(&self) -> &'static Page {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Protocol(_) => &BAD_GATEWAY,
            UpstreamError::ConnectTimeout | UpstreamError::ResponseTimeout => &GATEWAY_TIMEOUT,
        }
    }

    /// `error.type` of the upstream span.
    fn span_kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::ResponseTimeout => "response_timeout",
            UpstreamError::Protocol(_) => "protocol",
        }
    }

    fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Connect(_) => UpstreamErrorKind::connect,
            UpstreamError::ConnectTimeout | UpstreamError::ResponseTimeout => {
                UpstreamErrorKind::timeout
            }
            UpstreamError::Protocol(_) => UpstreamErrorKind::protocol,
        }
    }
}

/// The upstream base, split once.
struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// Path prefix of `upstream.url` without a trailing `/` (empty for none).
    base_path: String,
}

/// Shared by every connection; cheap to call concurrently.
pub struct Proxy {
    client: Client<HttpsConnector<HttpConnector>, ClientBody>,
    upstream: Upstream,
    response_timeout: Duration,
    public: Vec<String>,
    check_host: bool,
    /// `headers.identity`: which identity headers are sent.
    send: crate::config::IdentityHeaderSet,
    xfcc: bool,
    public_upgrades: bool,
    tunnel_limits: tunnel::TunnelLimits,
    underscores: Underscores,
    log_access: bool,
    request_ids: RequestIds,
    cache: Arc<StateCache>,
    material: Arc<TlsMaterial>,
    metrics: Metrics,
    /// certgate's own endpoints under `/.certgate/`.
    own: Arc<Enrollment>,
    /// `headers.assertion`, when on.
    assertion: Option<Arc<AssertionSigner>>,
    /// `identity.session_cookie`, when set.
    sessions: Option<session::SessionGuard>,
    /// `enrollment.renew_before` in seconds and the renewal page's URL: sent to the
    /// application as `X-Client-Cert-Renew` while a certificate is due for renewal.
    renew_notice: Option<(i64, HeaderValue)>,
}

fn assertion_signer(cfg: &Config) -> Result<Option<Arc<AssertionSigner>>, ProxyError> {
    let Some(a) = &cfg.headers.assertion else {
        return Ok(None);
    };
    AssertionSigner::new(
        &a.issuer,
        &a.audience,
        a.ttl,
        &a.key,
        a.previous_key.as_deref(),
    )
    .map(|s| Some(Arc::new(s)))
    .map_err(|e| ProxyError::AssertionKey(a.key_file.display().to_string(), e))
}

/// `GET /.certgate/jwks.json` (also served by the admin listener): the public keys that
/// verify `X-Client-Assertion`.
pub fn jwks_response(
    signer: Option<&AssertionSigner>,
    method: &http::Method,
    headers: &HeaderMap,
) -> Response<Full<Bytes>> {
    let Some(signer) = signer else {
        return pages::render(&crate::core::outcome::NOT_FOUND, headers);
    };
    if !matches!(*method, http::Method::GET | http::Method::HEAD) {
        return pages::render(
            &crate::core::outcome::MethodNotAllowed("GET, HEAD"),
            headers,
        );
    }
    let mut r = Response::new(Full::new(signer.jwks()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    // Short, so a rotation reaches verifiers soon.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

/// Hop-by-hop headers (RFC 9110 7.6.1) plus the legacy ones; never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

static X_CLIENT_ACCOUNT: HeaderName = HeaderName::from_static("x-client-account");
static X_CLIENT_CERT_SERIAL: HeaderName = HeaderName::from_static("x-client-cert-serial");
static X_CLIENT_CERT_FINGERPRINT: HeaderName = HeaderName::from_static("x-client-cert-fingerprint");
static X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
static X_CLIENT_CERT_NOT_AFTER: HeaderName = HeaderName::from_static("x-client-cert-not-after");
static CLIENT_CERT: HeaderName = HeaderName::from_static("client-cert");
static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_CLIENT_ASSERTION: HeaderName = HeaderName::from_static("x-client-assertion");
static X_CLIENT_CERT_RENEW: HeaderName = HeaderName::from_static("x-client-cert-renew");

/// `a` equals `b` when `_` and `-` count as the same byte. CGI-style applications
/// (PHP-FPM, WSGI, many frameworks) map both to `_` in a variable name, so to them
/// `X_Client_Account` *is* `X-Client-Account`. Header names are lower case already.
fn same_spelling(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(&x, &y)| {
            let x = if x == b'_' { b'-' } else { x };
            x == y
        })
}

/// Whether a client-sent header is one of the identity headers certgate owns, in any
/// spelling (`_` for `-`): these are removed from every request, on every route, before
/// anything else looks at it.
fn is_identity_header(name: &HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    // Most names (accept, host, user-agent, …) are settled by their first byte.
    if !matches!(n.first(), Some(b'x' | b'c' | b'f')) {
        return false;
    }
    const PREFIXES: [&[u8]; 2] = [b"x-client-", b"x-forwarded-"];
    const NAMES: [&[u8]; 3] = [b"client-cert", b"client-cert-chain", b"forwarded"];
    PREFIXES
        .iter()
        .any(|p| n.len() >= p.len() && same_spelling(&n[..p.len()], p))
        || NAMES.iter().any(|w| same_spelling(n, w))
}

/// A client header name with `_` that `headers.underscores: reject` refuses.
#[derive(Debug, PartialEq, Eq)]
pub struct UnderscoreInName(pub HeaderName);

/// Removes every client-sent identity header, in any spelling, and applies the
/// `headers.underscores` policy to the other names with `_`. Allocation-free unless a
/// header is removed.
pub fn strip_identity_headers(
    headers: &mut HeaderMap,
    underscores: Underscores,
) -> Result<(), UnderscoreInName> {
    let doomed = |n: &HeaderName| {
        is_identity_header(n)
            || (underscores == Underscores::Drop && n.as_str().as_bytes().contains(&b'_'))
    };
    if underscores == Underscores::Reject
        && let Some(n) = headers
            .keys()
            .find(|n| n.as_str().as_bytes().contains(&b'_'))
    {
        return Err(UnderscoreInName(n.clone()));
    }
    if !headers.keys().any(doomed) {
        return Ok(());
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for n in names {
        headers.remove(&n);
    }
    Ok(())
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION || name == header::UPGRADE || HOP_BY_HOP.contains(name)
}

/// Removes hop-by-hop headers, including those the `Connection` header names. Returns the
/// `Upgrade` header when the message asked for a protocol upgrade.
fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    // Most messages carry none: one pass over the few names present is cheaper than ten
    // hash lookups, and this runs twice per request.
    if !headers.keys().any(is_hop_by_hop) {
        return None;
    }
    let mut upgrade_requested = false;
    let connection_listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| {
            let t = t.trim();
            if t.eq_ignore_ascii_case("upgrade") {
                upgrade_requested = true;
                return None;
            }
            HeaderName::from_bytes(t.to_ascii_lowercase().as_bytes()).ok()
        })
        .collect();
    for n in &connection_listed {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
    let upgrade = headers.remove(header::UPGRADE);
    if upgrade_requested { upgrade } else { None }
}

impl Proxy {
    pub fn new(
        cfg: &Config,
        cache: Arc<StateCache>,
        material: Arc<TlsMaterial>,
        metrics: Metrics,
        own: Arc<Enrollment>,
    ) -> Result<Self, ProxyError> {
        let url = &cfg.upstream.url;
        let scheme = url.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = url
            .authority()
            .cloned()
            .ok_or_else(|| ProxyError::UpstreamUrl(url.to_string()))?;
        let base_path = url.path().trim_end_matches('/').to_string();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.upstream.connect_timeout));
        let builder =
            crate::tls::client_tls(scheme == Scheme::HTTPS).map_err(ProxyError::UpstreamTls)?;
        let connector = builder
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.upstream.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.upstream.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);

        if cfg!(feature = "bench-skip-state-check") {
            tracing::warn!(
                "built with the bench-skip-state-check feature: revocation and reset are NOT \
                 checked; this binary is for benchmarks only"
            );
        }
        Ok(Proxy {
            client,
            upstream: Upstream {
                scheme,
                authority,
                base_path,
            },
            response_timeout: cfg.upstream.response_timeout,
            public: cfg.routes.public.clone(),
            check_host: !cfg.server_names.is_empty(),
            send: cfg.headers.identity,
            xfcc: cfg.headers.xfcc,
            public_upgrades: cfg.routes.public_upgrades,
            tunnel_limits: tunnel::TunnelLimits {
                idle: cfg.limits.idle_timeout,
                max_age: cfg.limits.max_connection_age,
            },
            underscores: cfg.headers.underscores,
            log_access: cfg.log.access,
            request_ids: RequestIds::new(cfg.headers.request_id),
            cache,
            material,
            metrics,
            own,
            assertion: assertion_signer(cfg)?,
            sessions: session::SessionGuard::new(cfg),
            renew_notice: cfg.enrollment.as_ref().and_then(|e| {
                let url = format!("{}/.certgate/certificate", e.public_url);
                (!e.renew_before.is_zero())
                    .then(|| HeaderValue::from_str(&url).ok())
                    .flatten()
                    .map(|v| (e.renew_before.as_secs() as i64, v))
            }),
        })
    }

    /// The assertion signer of this configuration, when `headers.assertion` is on.
    pub fn assertion_signer(&self) -> Option<&Arc<AssertionSigner>> {
        self.assertion.as_ref()
    }

    /// The connection's assertion: the cached one while fresh, else a new one.
    fn assertion_for(&self, conn: &ConnInfo, id: &ClientIdentity) -> Option<HeaderValue> {
        let signer = self.assertion.as_ref()?;
        let now = crate::core::clock::now();
        let mut cached = conn.assertion.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref()
            && Arc::ptr_eq(&c.signer, signer)
            && now < c.renew_at
        {
            return Some(c.value.clone());
        }
        let value = match signer.sign(id, now).map(HeaderValue::try_from) {
            Ok(Ok(v)) => v,
            Ok(Err(_)) | Err(_) => {
                tracing::error!("cannot sign the identity assertion; forwarding without it");
                return None;
            }
        };
        *cached = Some(CachedAssertion {
            value: value.clone(),
            renew_at: now + (signer.ttl_secs() / 2).max(1),
            signer: signer.clone(),
        });
        Some(value)
    }

    /// Handles one request of connection `conn`. Never fails: every outcome is a response.
    pub async fn handle(&self, conn: &ConnInfo, mut req: Request<Incoming>) -> Response<RespBody> {
        let request_id = self.request_ids.assign(req.headers_mut());
        let start = Start::of(&req, request_id);
        let trace = crate::telemetry::get().map(|t| self.trace(t, conn, req.headers(), &start));
        let (decision, mut resp) = match strip_identity_headers(req.headers_mut(), self.underscores)
        {
            Ok(()) => self.route(conn, req, trace.as_ref()).await,
            Err(UnderscoreInName(name)) => {
                tracing::debug!(header = %name, "refusing a header name with '_' (headers.underscores: reject)");
                refuse(Decision::BadRequest, req.headers())
            }
        };
        let elapsed = start.at.elapsed();
        self.metrics.count_decision(decision);
        self.metrics.request_duration.observe(elapsed.as_secs_f64());
        self.metrics
            .count_http(&start.method, resp.status().as_u16(), elapsed.as_secs_f64());
        let upstream = resp.extensions_mut().remove::<UpstreamInfo>();
        if let Some(id) = &start.request_id
            && let http::header::Entry::Vacant(e) = resp.headers_mut().entry(&X_REQUEST_ID)
        {
            e.insert(id.clone());
        }
        let id = conn.identity.as_deref();
        if let Some(t) = trace {
            let who = id.map(|i| (i.serial.as_str(), i.account.as_deref()));
            t.finish(decision.as_str(), resp.status().as_u16(), who);
        }
        if decision.is_refusal() || self.log_access {
            let via = Via {
                peer: conn.peer,
                sni: conn.sni.as_deref(),
                tls_version: conn.tls_version,
                identity: conn.identity.as_ref(),
            };
            let status = resp.status().as_u16();
            let record = access::Record::new(start, via, decision, status, upstream);
            resp.extensions_mut().insert(Pending(Box::new(record)));
        }
        resp
    }

    /// The request's spans (`telemetry.otlp_endpoint`), with the connection's handshake on
    /// its first request.
    /// The request's fields come from the access log's [`Start`], read once.
    fn trace(
        &self,
        t: &'static crate::telemetry::Telemetry,
        conn: &ConnInfo,
        headers: &HeaderMap,
        start: &Start,
    ) -> crate::telemetry::RequestTrace {
        let host = start
            .uri
            .authority()
            .map(|a| a.host())
            .or_else(|| start.host.as_ref().and_then(|h| h.to_str().ok()));
        let trace = t.request(
            headers,
            &crate::telemetry::RequestStart {
                method: &start.method,
                path: start.uri.path(),
                host,
                version: start.version,
                peer: conn.peer,
                tls_version: conn.tls_version,
                user_agent: start.user_agent.as_ref().and_then(|v| v.to_str().ok()),
            },
        );
        if let Some(h) = conn.take_handshake() {
            trace.handshake(h, conn.sni.as_deref(), conn.identity.is_some());
        }
        trace
    }

    async fn route(
        &self,
        conn: &ConnInfo,
        mut req: Request<Incoming>,
        trace: Option<&crate::telemetry::RequestTrace>,
    ) -> (Decision, Response<RespBody>) {
        let headers = req.headers();
        let hosts = headers
            .get_all(header::HOST)
            .iter()
            .map(|h| h.to_str().ok());
        let authority = req.uri().authority().map(|a| a.as_str());
        let host = match gate::request_host(req.version() == Version::HTTP_11, authority, hosts) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "refusing the request's host");
                return refuse(Decision::BadRequest, headers);
            }
        };
        if self.check_host && !gate::host_matches_sni(host, conn.sni.as_deref()) {
            return refuse(Decision::Misdirected, headers);
        }
        let route = match gate::classify(req.uri().path(), &self.public) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "refusing request path");
                return refuse(Decision::BadRequest, headers);
            }
        };
        match route {
            Route::Own(rest) if rest == "/jwks.json" && self.assertion.is_some() => {
                let resp = jwks_response(self.assertion.as_deref(), req.method(), req.headers());
                (Decision::Own, resp.map(Either::Right))
            }
            Route::Own(rest) => {
                let rest = rest.into_owned();
                // /.certgate/certificate and /renew act for the connection's certificate:
                // decided like a protected request.
                let mut who = None;
                if Enrollment::needs_certificate(&rest)
                    && let Some(identity) = conn.identity.as_deref()
                {
                    let decision = self.decide(conn).await;
                    who = Some(crate::enroll::Presented { identity, decision });
                }
                let resp = self.own.handle(&rest, conn.peer, who, req).await;
                (Decision::Own, resp.map(Either::Right))
            }
            Route::Public => {
                if let Some(g) = &self.sessions
                    && let Err(d) = g
                        .check(conn.holder(), req.headers_mut(), false, &self.cache)
                        .await
                {
                    return refuse(d, req.headers());
                }
                (
                    Decision::Public,
                    self.forward(conn, req, false, trace).await,
                )
            }
            Route::Protected => {
                let span = trace.map(|t| t.decision());
                let decision = self.decide(conn).await;
                if let Some(s) = span {
                    s.end(decision.as_str());
                }
                if decision == Decision::Allowed && conn.first_allowed() {
                    // A renewed certificate's first use retires the one it renews.
                    if let Some(id) = conn.identity.as_deref() {
                        self.own.retire_renewed(id);
                    }
                }
                if decision != Decision::Allowed {
                    return refuse(decision, req.headers());
                }
                if let Some(g) = &self.sessions
                    && let Err(d) = g
                        .check(conn.holder(), req.headers_mut(), true, &self.cache)
                        .await
                {
                    return refuse(d, req.headers());
                }
                (decision, self.forward(conn, req, true, trace).await)
            }
        }
    }

    /// The per-request check for a protected path: the lookup, then the gate's decision.
    async fn decide(&self, conn: &ConnInfo) -> Decision {
        let id = conn.identity.as_deref();
        if cfg!(feature = "bench-skip-state-check") && id.is_some() {
            // Benchmark-only build (Cargo.toml): benches/compare.sh measures what the
            // revocation and reset check below costs by comparing against this.
            return Decision::Allowed;
        }
        let (state, facts) = match id {
            None => (None, Facts::default()),
            Some(id) => {
                let m = &self.material;
                let facts = Facts {
                    crl_revoked: !m.crls.is_empty() && m.crls.contains(&id.issuer_raw, &id.serial),
                };
                let state = self
                    .cache
                    .lookup_shared(&id.serial, id.account.as_deref())
                    .await;
                (Some(state), facts)
            }
        };
        let view = state
            .as_ref()
            .map(|s| s.as_ref().map(|s| s.view()).map_err(|e| *e));
        gate::decide(id, view, facts, crate::core::clock::now())
    }

    async fn forward(
        &self,
        conn: &ConnInfo,
        req: Request<Incoming>,
        with_identity: bool,
        trace: Option<&crate::telemetry::RequestTrace>,
    ) -> Response<RespBody> {
        let accept_html = pages::wants_html(req.headers());
        let (mut parts, body) = req.into_parts();
        let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        parts.extensions = http::Extensions::new();

        // Host: keep the client's (an h2 request carries it in :authority).
        let host = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| parts.headers.get(header::HOST).cloned());
        let upgrade = if parts.version == Version::HTTP_11 {
            strip_hop_by_hop(&mut parts.headers)
        } else {
            strip_hop_by_hop(&mut parts.headers);
            None
        };
        // An upgrade on a public route would be a tunnel without a certificate.
        let upgrade = upgrade.filter(|_| with_identity || self.public_upgrades);

        parts.uri = match self.upstream_uri(&parts.uri) {
            Some(u) => u,
            None => return pages::render(&Decision::BadRequest, &parts.headers).map(Either::Right),
        };
        parts.version = Version::HTTP_11;
        let h = &mut parts.headers;
        // Room for what is added below, in one step rather than growing twice.
        h.reserve(12);
        if let Some(host) = &host {
            h.insert(header::HOST, host.clone());
            h.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        h.insert(X_FORWARDED_FOR.clone(), conn.peer_ip.clone());
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        if with_identity && let Some(id) = conn.identity.as_deref() {
            let ih = &id.headers;
            let send = &self.send;
            if send.account
                && let Some(a) = &ih.account
            {
                h.insert(X_CLIENT_ACCOUNT.clone(), a.clone());
            }
            if send.serial {
                h.insert(X_CLIENT_CERT_SERIAL.clone(), ih.serial.clone());
            }
            if send.fingerprint {
                h.insert(X_CLIENT_CERT_FINGERPRINT.clone(), ih.fingerprint.clone());
            }
            if send.subject {
                h.insert(X_CLIENT_CERT_SUBJECT.clone(), ih.subject.clone());
            }
            if send.not_after {
                h.insert(X_CLIENT_CERT_NOT_AFTER.clone(), ih.not_after.clone());
            }
            if send.client_cert {
                h.insert(CLIENT_CERT.clone(), ih.client_cert.clone());
            }
            if self.xfcc {
                h.insert(X_FORWARDED_CLIENT_CERT.clone(), ih.xfcc.clone());
            }
            if let Some(a) = self.assertion_for(conn, id) {
                h.insert(X_CLIENT_ASSERTION.clone(), a);
            }
            if let Some((before, url)) = &self.renew_notice
                && id.issued_by_enrollment_ca
                && crate::core::clock::now() >= id.not_after - before
            {
                h.insert(X_CLIENT_CERT_RENEW.clone(), url.clone());
            }
        }
        if let Some(up) = &upgrade {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, up.clone());
        }

        let span = trace.map(|t| t.upstream(&parts.method, &mut parts.headers));
        let (body, body_stats) = ClientBody::new(body);
        let upstream_req = Request::from_parts(parts, body);
        let started = Instant::now();
        let result =
            tokio::time::timeout(self.response_timeout, self.client.request(upstream_req)).await;
        let took = started.elapsed();
        if let Some(s) = span {
            s.end(match &result {
                Ok(Ok(r)) => Ok(r.status().as_u16()),
                Ok(Err(_)) if body_stats.failed.load(std::sync::atomic::Ordering::Acquire) => {
                    Err("client_body")
                }
                Ok(Err(e)) => Err(classify_client_error(e).span_kind()),
                Err(_) => Err(UpstreamError::ResponseTimeout.span_kind()),
            });
        }
        self.metrics.upstream_duration.observe(took.as_secs_f64());
        let mut info = UpstreamInfo {
            status: None,
            micros: took.as_micros() as u64,
            body: body_stats.clone(),
        };
        let mut resp = match result {
            Err(_) => {
                let r = self.upstream_failed(UpstreamError::ResponseTimeout, accept_html);
                return with_info(r, info);
            }
            Ok(Err(e)) if body_stats.failed.load(std::sync::atomic::Ordering::Acquire) => {
                tracing::debug!(error = %crate::core::text::error_chain(&e), "the client's request body could not be read");
                let r = if accept_html {
                    pages::html(&BAD_BODY)
                } else {
                    pages::json(&BAD_BODY)
                };
                return with_info(r.map(Either::Right), info);
            }
            Ok(Err(e)) => {
                let r = self.upstream_failed(classify_client_error(&e), accept_html);
                return with_info(r, info);
            }
            Ok(Ok(r)) => r,
        };
        info.status = Some(resp.status().as_u16());

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some() {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            if let Some(client_upgrade) = client_upgrade {
                tokio::spawn(tunnel::run(
                    client_upgrade,
                    upstream_upgrade,
                    self.tunnel_limits,
                    conn.slot.clone(),
                    conn.phase.clone(),
                    conn.live.clone(),
                ));
            }
            return with_info(resp.map(Either::Left), info);
        }
        strip_hop_by_hop(resp.headers_mut());
        if let Some(g) = &self.sessions
            && let Err(d) = g
                .bind_response(conn.holder(), resp.headers(), &self.cache)
                .await
        {
            let r = if accept_html {
                pages::html(&d)
            } else {
                pages::json(&d)
            };
            return with_info(r.map(Either::Right), info);
        }
        right_size(resp.headers_mut());
        with_info(resp.map(Either::Left), info)
    }

    fn upstream_failed(&self, err: UpstreamError, html: bool) -> Response<RespBody> {
        tracing::warn!(error = %err, "upstream request failed");
        self.metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels { kind: err.kind() })
            .inc();
        let page = err.page();
        let r = if html {
            pages::html(page)
        } else {
            pages::json(page)
        };
        r.map(Either::Right)
    }

    fn upstream_uri(&self, original: &Uri) -> Option<Uri> {
        let pq = original.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let pq = if self.upstream.base_path.is_empty() {
            PathAndQuery::try_from(pq).ok()?
        } else {
            PathAndQuery::try_from(format!("{}{}", self.upstream.base_path, pq)).ok()?
        };
        Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()
    }
}

/// Moves the headers into a map sized for them when `headers` is much larger.
///
/// hyper keeps the (cleared) map of the last message it wrote on each connection and parses
/// the next incoming message into it. So the upstream connection parses responses into the
/// map of the request it forwarded (client headers plus certgate's ~12, about 2.5 KiB), and
/// the client connection would then keep that map while idle. Handing it a map sized for the
/// response keeps an idle client connection about 2 KiB smaller (20 MiB per 10,000).
fn right_size(headers: &mut HeaderMap) {
    let len = headers.len();
    if headers.capacity() <= 12 || headers.capacity() <= 2 * len {
        return;
    }
    let mut small = HeaderMap::with_capacity(len);
    let mut name: Option<HeaderName> = None;
    for (k, v) in std::mem::take(headers) {
        if let Some(k) = k {
            name = Some(k);
        }
        if let Some(n) = &name {
            small.append(n.clone(), v);
        }
    }
    *headers = small;
}

fn classify_client_error(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    if e.is_connect() {
        let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::TimedOut
            {
                return UpstreamError::ConnectTimeout;
            }
            src = s.source();
        }
        return UpstreamError::Connect(crate::core::text::error_chain(e));
    }
    UpstreamError::Protocol(crate::core::text::error_chain(e))
}

/// `resp` with what the upstream answered, for the access log.
fn with_info(mut resp: Response<RespBody>, info: UpstreamInfo) -> Response<RespBody> {
    resp.extensions_mut().insert(info);
    resp
}

fn refuse(decision: Decision, headers: &HeaderMap) -> (Decision, Response<RespBody>) {
    (
        decision,
        pages::render(&decision, headers).map(Either::Right),
    )
}

#[cfg(test)]
mod tests;
