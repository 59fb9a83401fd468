//! The admin API (`admin.listen`) and the metrics listener (`metrics.listen`).
//!
//! Both are plain HTTP/1.1 on hyper: the admin listener binds to loopback by default and is
//! guarded by a bearer token; the metrics listener serves `/metrics` and the probes without
//! a token, so it can be exposed to a scraper and to Kubernetes.
//!
//! Every change goes through the write-through methods of [`StateCache`] (`revoke`,
//! `reset_account`, `enable_two_factor`), which drop the cached entries, so the very next
//! proxied request sees it. Reads go straight to the store (`StateCache::store`): an
//! operator asking for the state wants the store's truth, not a cached copy. Tickets are
//! made by [`crate::core::ticket`]; only their hash is stored.
//!
//! Every change request writes one audit line (`target: "certgate::audit"`) naming the
//! action, the account or serial and the peer — never a ticket or the token.
//!
//! The routes, the JSON shapes and the error codes are documented on [`handle`]; the CLI
//! side is `admin::client`; both follow the route table and bodies in `admin::api`.

pub mod api;
pub mod client;
pub mod render;

use std::borrow::Cow;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use tokio::net::TcpListener;

use self::api::{
    Account, AccountChange, AccountStatus, CertificateStatus, CertificateSummary,
    CloseConnectionsRequest, Connection, Connections, Endpoint, NoFields, RevokeRequest, Revoked,
};
use crate::config::EnrollmentConfig;
use crate::core::clock::now;
use crate::core::outcome::Outcome;
use crate::core::phase::LameDuck;
use crate::core::text::{is_valid_account, normalize_serial, rfc3339};
use crate::core::ticket;
use crate::http::auth::{bearer_token, tokens_equal};
use crate::http::body::{BodyError, read_limited};
use crate::http::pages;
use crate::metrics::{AdminLabels, Metrics};
use crate::server::plain::{self, Peer};
use crate::state::cache::StateCache;
use crate::state::{AccountState, Revocation, RevocationReason, StoreError, UnixTime};

/// Largest accepted request body; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

const JSON: &str = "application/json";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every RFC 5280 reason name accepted by the revoke route, for error messages.
const REASONS: &str = "unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, \
                       cessationOfOperation, certificateHold, removeFromCRL, privilegeWithdrawn, \
                       aACompromise";

/// What the admin API needs to hand out enrollment links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentInfo {
    /// Base of `enroll_url`, without a trailing slash.
    pub public_url: String,
    pub ticket_ttl: Duration,
}

impl EnrollmentInfo {
    pub fn from_config(cfg: &EnrollmentConfig) -> Self {
        EnrollmentInfo {
            public_url: cfg.public_url.trim_end_matches('/').to_string(),
            ticket_ttl: cfg.ticket_ttl,
        }
    }

    /// `{public_url}/.certgate/enroll?ticket={ticket}`. A ticket is base64url, so it needs
    /// no escaping in a query.
    pub fn enroll_url(&self, ticket: &str) -> String {
        format!(
            "{}/.certgate/enroll?ticket={ticket}",
            self.public_url.trim_end_matches('/')
        )
    }
}

/// Everything the admin handlers share. Build it with [`AdminState::new`].
pub struct AdminState {
    pub cache: Arc<StateCache>,
    pub metrics: Metrics,
    /// Read on every authenticated request (trimmed; missing or empty refuses all).
    pub token_file: PathBuf,
    /// `None` when `enrollment.enabled: false`: changes still work, no tickets are issued.
    pub enrollment: Option<EnrollmentInfo>,
    /// Set while the token file is unusable, so the error is logged once per outage.
    token_unusable: AtomicBool,
    /// The gateway's open connections with a certificate.
    live: Arc<crate::live::Registry>,
    /// The current configuration's assertion signer (its JWK Set is `GET /jwks.json`).
    assertion: Arc<arc_swap::ArcSwapOption<crate::pki::assertion::AssertionSigner>>,
    /// Set when the gateway is shutting down: `/readyz` says 503.
    lame: Arc<LameDuck>,
}

impl AdminState {
    pub fn new(
        cache: Arc<StateCache>,
        metrics: Metrics,
        token_file: PathBuf,
        enrollment: Option<EnrollmentInfo>,
    ) -> Self {
        AdminState {
            live: crate::live::Registry::new(metrics.clone()),
            cache,
            metrics,
            token_file,
            enrollment,
            token_unusable: AtomicBool::new(false),
            assertion: Arc::new(arc_swap::ArcSwapOption::empty()),
            lame: Arc::default(),
        }
    }

    /// The gateway's shutdown flag, for `/readyz`.
    pub fn with_lame_duck(mut self, lame: Arc<LameDuck>) -> Self {
        self.lame = lame;
        self
    }

    /// Where the current assertion signer is kept (swapped on every reload).
    pub fn with_assertion(
        mut self,
        assertion: Arc<arc_swap::ArcSwapOption<crate::pki::assertion::AssertionSigner>>,
    ) -> Self {
        self.assertion = assertion;
        self
    }

    /// The registry of the gateway's open connections (a fresh, empty one by default).
    pub fn with_live(mut self, live: Arc<crate::live::Registry>) -> Self {
        self.live = live;
        self
    }

    /// Checks `Authorization: Bearer <token>` against the token file.
    ///
    /// The file is read on every request rather than cached: the admin API sees a handful
    /// of requests, one small read is nothing next to a store round trip, and a rotated
    /// token takes effect at once without a reload or an mtime race. Its content is
    /// trimmed. A missing, unreadable or empty file refuses every request (fails closed);
    /// the error is logged once until the file is usable again.
    async fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let expected = match tokio::fs::read_to_string(&self.token_file).await {
            Ok(s) if !s.trim().is_empty() => s,
            Ok(_) => {
                self.token_problem("is empty");
                return Err(ApiError::Unauthorized);
            }
            Err(e) => {
                self.token_problem(&e.to_string());
                return Err(ApiError::Unauthorized);
            }
        };
        if self.token_unusable.swap(false, Ordering::Relaxed) {
            tracing::info!(file = %self.token_file.display(), "admin token file is usable again");
        }
        match bearer_token(headers) {
            Some(presented) if tokens_equal(presented, expected.trim()) => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
    }

    fn token_problem(&self, what: &str) {
        if !self.token_unusable.swap(true, Ordering::Relaxed) {
            tracing::error!(
                file = %self.token_file.display(),
                problem = what,
                "admin token file unusable: every admin request is refused until it is fixed"
            );
        }
    }
}

/// Everything that can go wrong in an admin request, with its one mapping to a status and
/// an error code. Details of store failures are logged, never sent.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("a valid admin token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed; use {0}")]
    MethodNotAllowed(&'static str),
    #[error("request body larger than {MAX_BODY_BYTES} bytes")]
    PayloadTooLarge,
    #[error("{0}")]
    BadRequest(String),
    #[error("account ids must match [A-Za-z0-9._@+-]{{1,128}}")]
    InvalidAccount,
    #[error("serials are hex, e.g. 8f01, 8F:01 or 0x8f01")]
    InvalidSerial,
    #[error("unknown revocation reason {0:?}; valid reasons: {REASONS}")]
    InvalidReason(String),
    #[error("no account {0:?}")]
    AccountNotFound(String),
    #[error("certificate {0} is neither on record nor revoked")]
    CertificateNotFound(String),
    #[error(
        "two-factor is not enabled for account {0:?}; enable it first \
         (POST /v1/accounts/{0}/two-factor)"
    )]
    TwoFactorDisabled(String),
    #[error("enrollment is disabled (enrollment.enabled: false); no tickets are issued")]
    EnrollmentDisabled,
    #[error("the state store is unavailable; try again later")]
    StoreUnavailable(#[source] StoreError),
    #[error(
        "the state store is not answering (or its data cannot be trusted): protected \
         requests cannot be decided"
    )]
    NotReady,
    #[error(
        "this instance is shutting down: it finishes what it has and takes no new work \
         once shutdown.drain_delay is over"
    )]
    ShuttingDown,
}

impl Outcome for ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound
            | ApiError::AccountNotFound(_)
            | ApiError::CertificateNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_)
            | ApiError::InvalidAccount
            | ApiError::InvalidSerial
            | ApiError::InvalidReason(_) => StatusCode::BAD_REQUEST,
            ApiError::TwoFactorDisabled(_) | ApiError::EnrollmentDisabled => StatusCode::CONFLICT,
            ApiError::StoreUnavailable(_) | ApiError::NotReady | ApiError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn token(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidAccount => "invalid_account",
            ApiError::InvalidSerial => "invalid_serial",
            ApiError::InvalidReason(_) => "invalid_reason",
            ApiError::AccountNotFound(_) => "account_not_found",
            ApiError::CertificateNotFound(_) => "certificate_not_found",
            ApiError::TwoFactorDisabled(_) => "two_factor_disabled",
            ApiError::EnrollmentDisabled => "enrollment_disabled",
            ApiError::StoreUnavailable(_) => "store_unavailable",
            ApiError::NotReady => "not_ready",
            ApiError::ShuttingDown => "shutting_down",
        }
    }

    fn title(&self) -> &'static str {
        "certgate admin API"
    }

    fn message(&self) -> Cow<'static, str> {
        Cow::Owned(self.to_string())
    }

    fn add_headers(&self, h: &mut HeaderMap) {
        match self {
            ApiError::Unauthorized => {
                h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::MethodNotAllowed(allow) => {
                h.insert(ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
    }
}

impl ApiError {
    /// Admin answers are JSON only.
    fn into_response(self) -> Response<Full<Bytes>> {
        if let ApiError::StoreUnavailable(source) = &self {
            tracing::error!(error = %source, "admin request failed: state store call failed");
        }
        pages::json(&self)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::StoreUnavailable(e)
    }
}

/// Answers one admin API request. Public so tests and other listeners can call it with
/// any body type.
///
/// Routes (JSON in and out; every route but the probes needs `Authorization: Bearer`):
/// - `POST /v1/accounts/{id}/two-factor` → `{account, generation, two_factor, created_at,
///   reset_at, ticket, enroll_url, ticket_expires_at}`; without enrollment, `note` instead
///   of the ticket fields.
/// - `POST /v1/accounts/{id}/reset` → the same shape (a ticket only when two-factor is on).
/// - `POST /v1/accounts/{id}/tickets` → the same shape; 404 for an unknown account, 409
///   `two_factor_disabled` or `enrollment_disabled`.
/// - `GET /v1/accounts/{id}` → `{account, generation, two_factor, created_at, reset_at,
///   certificates: [{serial, generation, fingerprint, not_after, revoked}]}`.
/// - `POST /v1/certificates/{serial}/revoke` (body optional: `{"reason": "<RFC 5280 name>"}`)
///   → `{serial, account, revoked: true, reason, revoked_at}`; idempotent.
/// - `GET /v1/certificates/{serial}` → `{serial, account, generation, fingerprint,
///   not_after, issued_at, revoked, reason, revoked_at}` (null where unknown).
/// - `GET /healthz`, `GET /readyz` (no token).
///
/// Errors are `{"error": "<code>", "message": "…"}`: 400 `bad_request`, `invalid_account`,
/// `invalid_serial`, `invalid_reason`; 401 `unauthorized`; 404 `not_found`,
/// `account_not_found`, `certificate_not_found`; 405 `method_not_allowed`; 409
/// `two_factor_disabled`, `enrollment_disabled`; 413 `payload_too_large`; 503
/// `store_unavailable`, `not_ready`. Times are RFC 3339 UTC.
pub async fn handle<B>(state: &AdminState, req: Request<B>) -> Response<Full<Bytes>>
where
    B: Body + Send,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let route = Endpoint::parse(parts.uri.path());
    let label = route.map_or("unmatched", |r| r.label());
    let resp = match respond(state, route, &parts, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    state
        .metrics
        .admin_requests
        .get_or_create(&AdminLabels {
            route: label,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

async fn respond<B>(
    state: &AdminState,
    route: Option<Endpoint<'_>>,
    req: &http::request::Parts,
    body: B,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body + Send,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The probes answer without a token; everything else is refused before anything
    // about it (even whether the route exists) is revealed.
    if route == Some(Endpoint::Jwks) {
        check_method(&Endpoint::Jwks, &req.method)?;
        let signer = state.assertion.load_full();
        return match signer {
            Some(s) => {
                let mut r = Response::new(Full::new(s.jwks()));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/jwk-set+json"),
                );
                Ok(r)
            }
            None => Err(ApiError::NotFound),
        };
    }
    if let Some(probe @ (Endpoint::Healthz | Endpoint::Readyz)) = route {
        check_method(&probe, &req.method)?;
        return Ok(match probe {
            Endpoint::Healthz => healthz(),
            _ => readyz(&state.cache, &state.lame).await,
        });
    }
    let peer = req
        .extensions
        .get::<Peer>()
        .map_or_else(|| "-".to_string(), |p| p.0.to_string());
    if let Err(e) = state.authorize(&req.headers).await {
        tracing::warn!(peer = %peer, path = %req.uri.path(), "admin request refused: bad or missing token");
        return Err(e);
    }
    let route = route.ok_or(ApiError::NotFound)?;
    check_method(&route, &req.method)?;
    let body = if route.method() == Method::POST {
        read_body(&req.headers, body).await?
    } else {
        Bytes::new()
    };

    match route {
        Endpoint::Account(id) => get_account(state, &account_id(id)?).await,
        Endpoint::EnableTwoFactor(id) => {
            let account = account_id(id)?;
            parse_json::<NoFields>(&body)?;
            change_account(state, &account, AccountAction::EnableTwoFactor, &peer).await
        }
        Endpoint::Reset(id) => {
            let account = account_id(id)?;
            parse_json::<NoFields>(&body)?;
            change_account(state, &account, AccountAction::Reset, &peer).await
        }
        Endpoint::Tickets(id) => {
            let account = account_id(id)?;
            parse_json::<NoFields>(&body)?;
            change_account(state, &account, AccountAction::Ticket, &peer).await
        }
        Endpoint::Certificate(s) => get_certificate(state, &serial(s)?).await,
        Endpoint::Revoke(s) => {
            let serial = serial(s)?;
            let body: RevokeRequest = parse_json(&body)?;
            let reason = match body.reason.as_deref() {
                None => RevocationReason::Unspecified,
                Some(name) => RevocationReason::parse(name)
                    .ok_or_else(|| ApiError::InvalidReason(name.to_string()))?,
            };
            revoke(state, &serial, reason, &peer).await
        }
        Endpoint::Connections(id) => Ok(connections(state, &account_id(id)?, None)),
        Endpoint::CloseConnections(id) => {
            let account = account_id(id)?;
            let body: CloseConnectionsRequest = parse_json(&body)?;
            let only = body.serial.as_deref().map(serial).transpose()?;
            Ok(connections(state, &account, Some((only, &peer))))
        }
        // Answered above, before the token check.
        Endpoint::Healthz | Endpoint::Readyz | Endpoint::Jwks => Err(ApiError::NotFound),
    }
}

fn check_method(route: &Endpoint<'_>, method: &Method) -> Result<(), ApiError> {
    if *method == route.method() {
        Ok(())
    } else if route.method() == Method::GET {
        Err(ApiError::MethodNotAllowed("GET"))
    } else {
        Err(ApiError::MethodNotAllowed("POST"))
    }
}

/// Percent-decodes an account path segment and validates it.
fn account_id(raw: &str) -> Result<String, ApiError> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::InvalidAccount)?;
    if is_valid_account(&decoded) {
        Ok(decoded.into_owned())
    } else {
        Err(ApiError::InvalidAccount)
    }
}

/// Percent-decodes a serial path segment (`AB%3ACD`) and normalises it.
fn serial(raw: &str) -> Result<String, ApiError> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::InvalidSerial)?;
    normalize_serial(&decoded).ok_or(ApiError::InvalidSerial)
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`] (413).
async fn read_body<B>(headers: &HeaderMap, body: B) -> Result<Bytes, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    read_limited(headers, body, MAX_BODY_BYTES, None)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => ApiError::PayloadTooLarge,
            BodyError::TimedOut | BodyError::Unreadable => {
                ApiError::BadRequest("could not read the request body".into())
            }
        })
}

/// An empty body is the default value; anything else must be valid JSON of `T`.
fn parse_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

fn healthz() -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#.into())
}

/// `/readyz`: 200 `{"status":"ok"}` while protected traffic can be decided; 200
/// `{"status":"degraded"}` during a store outage that began after the store had answered
/// (cached answers still serve; see [`StateCache::ready`] for why the instance stays in
/// the load balancer); 503 `not_ready` before the store has ever answered and while its
/// data cannot be trusted. While not ready, the probe itself pings the store, so readiness
/// comes back without other traffic.
async fn readyz(cache: &StateCache, lame: &LameDuck) -> Response<Full<Bytes>> {
    if lame.is_on() {
        return ApiError::ShuttingDown.into_response();
    }
    let ready = cache.ready() || (cache.probe().await && cache.ready());
    if !ready {
        return ApiError::NotReady.into_response();
    }
    if cache.degraded() {
        json_response(
            StatusCode::OK,
            r#"{"status":"degraded","message":"the state store does not answer: cached answers are used as state.on_error allows, other protected requests get 503"}"#.into(),
        )
    } else {
        healthz()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccountAction {
    EnableTwoFactor,
    Reset,
    Ticket,
}

impl AccountAction {
    fn name(self) -> &'static str {
        match self {
            AccountAction::EnableTwoFactor => "enable_two_factor",
            AccountAction::Reset => "reset",
            AccountAction::Ticket => "issue_ticket",
        }
    }
}

/// One audit line per change request, written when the request ends.
struct Audit<'a> {
    action: &'static str,
    peer: &'a str,
    account: Option<String>,
    serial: Option<String>,
    generation: Option<u64>,
    reason: Option<&'static str>,
    ticket_issued: bool,
}

impl<'a> Audit<'a> {
    fn new(action: &'static str, peer: &'a str) -> Self {
        Audit {
            action,
            peer,
            account: None,
            serial: None,
            generation: None,
            reason: None,
            ticket_issued: false,
        }
    }

    fn log<T>(&self, result: &Result<T, ApiError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.token(),
        };
        tracing::info!(
            target: "certgate::audit",
            action = self.action,
            outcome,
            account = self.account.as_deref().unwrap_or("-"),
            serial = self.serial.as_deref().unwrap_or("-"),
            generation = self.generation.unwrap_or(0),
            reason = self.reason.unwrap_or("-"),
            ticket_issued = self.ticket_issued,
            peer = self.peer,
        );
    }
}

async fn change_account(
    state: &AdminState,
    account: &str,
    action: AccountAction,
    peer: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let mut audit = Audit::new(action.name(), peer);
    audit.account = Some(account.to_string());
    let result = change_account_inner(state, account, action, &mut audit).await;
    audit.log(&result);
    result
}

async fn change_account_inner(
    state: &AdminState,
    account: &str,
    action: AccountAction,
    audit: &mut Audit<'_>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let now = now();
    let is_reset = matches!(action, AccountAction::Reset);
    let record = match action {
        AccountAction::EnableTwoFactor => state.cache.enable_two_factor(account, now).await?,
        AccountAction::Reset => state.cache.reset_account(account, now).await?,
        AccountAction::Ticket => {
            let record = state
                .cache
                .store()
                .account(account)
                .await?
                .ok_or_else(|| ApiError::AccountNotFound(account.to_string()))?;
            if !record.two_factor {
                return Err(ApiError::TwoFactorDisabled(account.to_string()));
            }
            if state.enrollment.is_none() {
                return Err(ApiError::EnrollmentDisabled);
            }
            record
        }
    };
    audit.generation = Some(record.generation);

    let mut body = AccountChange {
        account: account_view(&record),
        ..AccountChange::default()
    };
    match &state.enrollment {
        // Tickets are for accounts enrolled in two-factor; a reset always answers with one,
        // because its whole point is that the user enrolls again (DESIGN: "returns a new
        // ticket"), even for an account the reset just created.
        Some(enrollment) if record.two_factor || is_reset => {
            let ttl = enrollment.ticket_ttl;
            let t = crate::state::issue_ticket(
                state.cache.store().as_ref(),
                account,
                record.generation,
                ttl,
                now,
            )
            .await?;
            audit.ticket_issued = true;
            body.enroll_url = Some(enrollment.enroll_url(&t));
            body.ticket = Some(t);
            body.ticket_expires_at = Some(rfc3339(ticket::expires_at(now, ttl)));
        }
        Some(_) => {
            body.note = Some(format!(
                "two-factor is not enabled for this account, so no enrollment ticket was issued; \
                 enable it with POST {}",
                Endpoint::EnableTwoFactor(account).path()
            ));
        }
        None => {
            body.note = Some(
                "enrollment is disabled (enrollment.enabled: false), so no enrollment ticket was \
                 issued; certificates must be issued outside certgate"
                    .into(),
            );
        }
    }
    Ok(json_ok(&body))
}

fn account_view(a: &AccountState) -> Account {
    Account {
        account: a.account.clone(),
        generation: a.generation,
        two_factor: a.two_factor,
        created_at: rfc3339(a.created_at),
        reset_at: a.reset_at.map(rfc3339),
    }
}

async fn get_account(state: &AdminState, account: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let store = state.cache.store();
    let record = store
        .account(account)
        .await?
        .ok_or_else(|| ApiError::AccountNotFound(account.to_string()))?;
    let mut certs = store.certificates_of(account).await?;
    certs.sort_by(|a, b| (a.issued_at, &a.serial).cmp(&(b.issued_at, &b.serial)));
    let mut list = Vec::with_capacity(certs.len());
    for c in certs {
        let revoked = store.revocation(&c.serial).await?.is_some();
        list.push(CertificateSummary {
            not_after: rfc3339(c.not_after),
            serial: c.serial,
            generation: c.generation,
            fingerprint: c.fingerprint,
            revoked,
        });
    }
    Ok(json_ok(&AccountStatus {
        account: account_view(&record),
        certificates: list,
    }))
}

async fn revoke(
    state: &AdminState,
    serial: &str,
    reason: RevocationReason,
    peer: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let mut audit = Audit::new("revoke", peer);
    audit.serial = Some(serial.to_string());
    audit.reason = Some(reason.as_str());
    let result = async {
        // The registry knows notAfter for certificates certgate has seen; the store may
        // then drop the record once the certificate has expired anyway.
        let known = state.cache.store().certificate(serial).await?;
        audit.account = known.as_ref().map(|c| c.account.clone());
        let revocation = Revocation {
            serial: serial.to_string(),
            reason,
            revoked_at: now(),
            not_after: known.as_ref().map(|c| c.not_after),
        };
        // Idempotent: an earlier revocation is kept and returned as it is.
        let stored = state.cache.revoke(revocation).await?;
        Ok(json_ok(&Revoked {
            account: known.map(|c| c.account),
            revoked: true,
            reason: stored.reason.as_str().to_string(),
            revoked_at: rfc3339(stored.revoked_at),
            serial: stored.serial,
        }))
    }
    .await;
    audit.log(&result);
    result
}

async fn get_certificate(
    state: &AdminState,
    serial: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let store = state.cache.store();
    let cert = store.certificate(serial).await?;
    let revocation = store.revocation(serial).await?;
    if cert.is_none() && revocation.is_none() {
        return Err(ApiError::CertificateNotFound(serial.to_string()));
    }
    let time = |t: Option<UnixTime>| t.map(rfc3339);
    Ok(json_ok(&CertificateStatus {
        serial: serial.to_string(),
        account: cert.as_ref().map(|c| c.account.clone()),
        generation: cert.as_ref().map(|c| c.generation),
        fingerprint: cert.as_ref().map(|c| c.fingerprint.clone()),
        not_after: time(
            cert.as_ref()
                .map(|c| c.not_after)
                .or(revocation.as_ref().and_then(|r| r.not_after)),
        ),
        issued_at: time(cert.as_ref().map(|c| c.issued_at)),
        revoked: revocation.is_some(),
        reason: revocation.as_ref().map(|r| r.reason.as_str().to_string()),
        revoked_at: time(revocation.as_ref().map(|r| r.revoked_at)),
    }))
}

/// Lists this instance's open connections of `account`; with `close`, closes them (those
/// of one serial when it names one) and lists the ones it closed.
fn connections(
    state: &AdminState,
    account: &str,
    close: Option<(Option<String>, &str)>,
) -> Response<Full<Bytes>> {
    let mut conns = state.live.of_account(account);
    let mut closed = None;
    if let Some((only, peer)) = close {
        if let Some(s) = &only {
            conns.retain(|c| c.identity.serial == *s);
        }
        let n = conns
            .iter()
            .filter(|c| {
                state
                    .live
                    .close(c, crate::core::decision::CloseReason::Admin)
            })
            .count();
        let mut audit = Audit::new("close-connections", peer);
        audit.account = Some(account.to_string());
        audit.serial = only;
        audit.log(&Ok::<(), ApiError>(()));
        closed = Some(n);
    }
    json_ok(&Connections {
        instance: instance_name(),
        account: account.to_string(),
        connections: conns
            .iter()
            .map(|c| Connection {
                peer: c.peer.to_string(),
                serial: c.identity.serial.clone(),
                protocol: c.protocol().to_string(),
                opened_at: rfc3339(c.opened_at),
                requests: c.requests(),
            })
            .collect(),
        closed,
    })
}

/// This instance, as the connection routes name it: host name and process id.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host} (pid {})", std::process::id())
}

/// A 200 answer with a typed body.
fn json_ok<T: serde::Serialize>(body: &T) -> Response<Full<Bytes>> {
    let text = serde_json::to_string(body).expect("admin answers serialise");
    json_response(StatusCode::OK, text)
}

/// A JSON response. `no-store`: answers may carry a one-time ticket.
fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Answers one request on the metrics listener: `GET /metrics` (OpenMetrics text),
/// `GET /healthz`, `GET /readyz`; no token.
pub async fn handle_metrics<B>(
    metrics: &Metrics,
    cache: &StateCache,
    lame: &LameDuck,
    req: Request<B>,
) -> Response<Full<Bytes>> {
    let result = match req.uri().path() {
        "/metrics" => check_method(&Endpoint::Healthz, req.method()).map(|()| {
            let mut resp = Response::new(Full::new(Bytes::from(metrics.encode())));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            resp
        }),
        "/healthz" => check_method(&Endpoint::Healthz, req.method()).map(|()| healthz()),
        "/readyz" => match check_method(&Endpoint::Readyz, req.method()) {
            Ok(()) => Ok(readyz(cache, lame).await),
            Err(e) => Err(e),
        },
        _ => Err(ApiError::NotFound),
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// Serves the admin API on `listener` until `shutdown` resolves; then stops accepting,
/// lets in-flight requests finish for up to [`plain::DRAIN_TIMEOUT`] and closes the rest.
pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) {
    plain::serve(listener, shutdown, "admin", move |req| {
        let state = state.clone();
        async move { handle(&state, req).await }
    })
    .await
}

/// Serves `/metrics` and the probes on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    cache: Arc<StateCache>,
    lame: Arc<LameDuck>,
    shutdown: impl Future<Output = ()>,
) {
    plain::serve(listener, shutdown, "metrics", move |req| {
        let metrics = metrics.clone();
        let cache = cache.clone();
        let lame = lame.clone();
        async move { handle_metrics(&metrics, &cache, &lame, req).await }
    })
    .await
}

#[cfg(test)]
mod tests;
