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
//! side is `admin_client`.

pub mod client;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::EnrollmentConfig;
use crate::core::clock::now;
use crate::core::text::{is_valid_account, normalize_serial, rfc3339};
use crate::core::ticket;
use crate::metrics::{AdminLabels, Metrics};
use crate::state::cache::StateCache;
use crate::state::{AccountState, Revocation, RevocationReason, StoreError, UnixTime};

/// Largest accepted request body; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long a shut-down listener waits for in-flight requests before closing them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A client must send its request head within this time (no slow-loris on the listener).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl AdminState {
    pub fn new(
        cache: Arc<StateCache>,
        metrics: Metrics,
        token_file: PathBuf,
        enrollment: Option<EnrollmentInfo>,
    ) -> Self {
        AdminState {
            cache,
            metrics,
            token_file,
            enrollment,
            token_unusable: AtomicBool::new(false),
        }
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

/// Compares two tokens in constant time. Both are hashed first (SHA-256), so neither
/// their contents nor their lengths leak through timing.
pub fn tokens_equal(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive), if any.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The client address of a connection, put into each request's extensions by the serve
/// loops (absent when [`handle`] is called directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

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
}

impl ApiError {
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
            ApiError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
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
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        if let ApiError::StoreUnavailable(source) = &self {
            tracing::error!(error = %source, "admin request failed: state store call failed");
        }
        let mut resp = json_response(
            self.status(),
            &json!({ "error": self.code(), "message": self.to_string() }),
        );
        match self {
            ApiError::Unauthorized => {
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::MethodNotAllowed(allow) => {
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::StoreUnavailable(e)
    }
}

/// The routes; ids are the raw (still percent-encoded) path segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Healthz,
    Readyz,
    Account(&'a str),
    EnableTwoFactor(&'a str),
    Reset(&'a str),
    Tickets(&'a str),
    Certificate(&'a str),
    Revoke(&'a str),
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Option<Route<'a>> {
        let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        Some(match segments.as_slice() {
            ["healthz"] => Route::Healthz,
            ["readyz"] => Route::Readyz,
            ["v1", "accounts", id] => Route::Account(id),
            ["v1", "accounts", id, "two-factor"] => Route::EnableTwoFactor(id),
            ["v1", "accounts", id, "reset"] => Route::Reset(id),
            ["v1", "accounts", id, "tickets"] => Route::Tickets(id),
            ["v1", "certificates", serial] => Route::Certificate(serial),
            ["v1", "certificates", serial, "revoke"] => Route::Revoke(serial),
            _ => return None,
        })
    }

    /// The `route` label of `certgate_admin_requests_total`.
    fn label(&self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Account(_) => "/v1/accounts/{id}",
            Route::EnableTwoFactor(_) => "/v1/accounts/{id}/two-factor",
            Route::Reset(_) => "/v1/accounts/{id}/reset",
            Route::Tickets(_) => "/v1/accounts/{id}/tickets",
            Route::Certificate(_) => "/v1/certificates/{serial}",
            Route::Revoke(_) => "/v1/certificates/{serial}/revoke",
        }
    }

    fn method(&self) -> Method {
        match self {
            Route::Healthz | Route::Readyz | Route::Account(_) | Route::Certificate(_) => {
                Method::GET
            }
            _ => Method::POST,
        }
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
    let route = Route::parse(parts.uri.path());
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
    route: Option<Route<'_>>,
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
    if let Some(probe @ (Route::Healthz | Route::Readyz)) = route {
        check_method(&probe, &req.method)?;
        return Ok(match probe {
            Route::Healthz => healthz(),
            _ => readyz(&state.cache).await,
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
        Route::Account(id) => get_account(state, &account_id(id)?).await,
        Route::EnableTwoFactor(id) => {
            let account = account_id(id)?;
            parse_json::<NoFields>(&body)?;
            change_account(state, &account, AccountAction::EnableTwoFactor, &peer).await
        }
        Route::Reset(id) => {
            let account = account_id(id)?;
            parse_json::<NoFields>(&body)?;
            change_account(state, &account, AccountAction::Reset, &peer).await
        }
        Route::Tickets(id) => {
            let account = account_id(id)?;
            parse_json::<NoFields>(&body)?;
            change_account(state, &account, AccountAction::Ticket, &peer).await
        }
        Route::Certificate(s) => get_certificate(state, &serial(s)?).await,
        Route::Revoke(s) => {
            let serial = serial(s)?;
            let body: RevokeBody = parse_json(&body)?;
            let reason = match body.reason.as_deref() {
                None => RevocationReason::Unspecified,
                Some(name) => RevocationReason::parse(name)
                    .ok_or_else(|| ApiError::InvalidReason(name.to_string()))?,
            };
            revoke(state, &serial, reason, &peer).await
        }
        // Answered above, before the token check.
        Route::Healthz | Route::Readyz => Err(ApiError::NotFound),
    }
}

fn check_method(route: &Route<'_>, method: &Method) -> Result<(), ApiError> {
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

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`] (413), early when the
/// declared length already says so.
async fn read_body<B>(headers: &HeaderMap, body: B) -> Result<Bytes, ApiError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::PayloadTooLarge),
        Err(_) => Err(ApiError::BadRequest(
            "could not read the request body".into(),
        )),
    }
}

/// An empty body is the default value; anything else must be valid JSON of `T`.
fn parse_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Body of the account routes: nothing, or an empty object.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: Option<String>,
}

fn healthz() -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &json!({ "status": "ok" }))
}

/// 200 while protected traffic can be decided (see [`StateCache::ready`]). While not
/// ready, the probe itself pings the store, so readiness comes back without other traffic.
async fn readyz(cache: &StateCache) -> Response<Full<Bytes>> {
    if cache.ready() || (cache.probe().await && cache.ready()) {
        json_response(StatusCode::OK, &json!({ "status": "ok" }))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "error": "not_ready",
                "message": "the state store is not answering (or its data cannot be trusted): protected requests cannot be decided"
            }),
        )
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
            Err(e) => e.code(),
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

    let mut body = account_json(&record);
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
            body["enroll_url"] = Value::String(enrollment.enroll_url(&t));
            body["ticket"] = Value::String(t);
            body["ticket_expires_at"] = Value::String(rfc3339(ticket::expires_at(now, ttl)));
        }
        Some(_) => {
            body["note"] = Value::String(format!(
                "two-factor is not enabled for this account, so no enrollment ticket was issued; \
                 enable it with POST /v1/accounts/{account}/two-factor"
            ));
        }
        None => {
            body["note"] = Value::String(
                "enrollment is disabled (enrollment.enabled: false), so no enrollment ticket was \
                 issued; certificates must be issued outside certgate"
                    .into(),
            );
        }
    }
    Ok(json_response(StatusCode::OK, &body))
}

fn account_json(a: &AccountState) -> Value {
    json!({
        "account": a.account,
        "generation": a.generation,
        "two_factor": a.two_factor,
        "created_at": rfc3339(a.created_at),
        "reset_at": a.reset_at.map(rfc3339),
    })
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
        list.push(json!({
            "serial": c.serial,
            "generation": c.generation,
            "fingerprint": c.fingerprint,
            "not_after": rfc3339(c.not_after),
            "revoked": revoked,
        }));
    }
    let mut body = account_json(&record);
    body["certificates"] = Value::Array(list);
    Ok(json_response(StatusCode::OK, &body))
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
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "serial": stored.serial,
                "account": known.map(|c| c.account),
                "revoked": true,
                "reason": stored.reason.as_str(),
                "revoked_at": rfc3339(stored.revoked_at),
            }),
        ))
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
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "serial": serial,
            "account": cert.as_ref().map(|c| c.account.clone()),
            "generation": cert.as_ref().map(|c| c.generation),
            "fingerprint": cert.as_ref().map(|c| c.fingerprint.clone()),
            "not_after": time(cert.as_ref().map(|c| c.not_after).or(revocation.as_ref().and_then(|r| r.not_after))),
            "issued_at": time(cert.as_ref().map(|c| c.issued_at)),
            "revoked": revocation.is_some(),
            "reason": revocation.as_ref().map(|r| r.reason.as_str()),
            "revoked_at": time(revocation.as_ref().map(|r| r.revoked_at)),
        }),
    ))
}

/// A JSON response. `no-store`: answers may carry a one-time ticket.
fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
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
    req: Request<B>,
) -> Response<Full<Bytes>> {
    let result = match req.uri().path() {
        "/metrics" => check_method(&Route::Healthz, req.method()).map(|()| {
            let mut resp = Response::new(Full::new(Bytes::from(metrics.encode())));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            resp
        }),
        "/healthz" => check_method(&Route::Healthz, req.method()).map(|()| healthz()),
        "/readyz" => match check_method(&Route::Readyz, req.method()) {
            Ok(()) => Ok(readyz(cache).await),
            Err(e) => Err(e),
        },
        _ => Err(ApiError::NotFound),
    };
    result.unwrap_or_else(ApiError::into_response)
}

/// Serves the admin API on `listener` until `shutdown` resolves; then stops accepting,
/// lets in-flight requests finish for up to [`DRAIN_TIMEOUT`] and closes the rest.
pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) {
    serve(listener, shutdown, "admin", move |req| {
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
    shutdown: impl Future<Output = ()>,
) {
    serve(listener, shutdown, "metrics", move |req| {
        let metrics = metrics.clone();
        let cache = cache.clone();
        async move { handle_metrics(&metrics, &cache, req).await }
    })
    .await
}

/// The accept loop shared by both listeners: HTTP/1.1, a header read timeout, graceful
/// shutdown with a bounded drain.
async fn serve<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    name: &'static str,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(listener = name, addr = %local, "listening");
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let service = service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(listener = name, peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        listener = name,
        open = graceful.count(),
        "shutting down; draining connections"
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "connections still open after the drain timeout; closing them"
        );
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use http::HeaderMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::client::{self, AdminCommand, ClientError};
    use super::*;
    use crate::config::{CacheConfig, OnError, StateBackend, StateConfig};
    use crate::state::{BoxFut, CertRecord, StateStore, TicketRecord};

    const TOKEN: &str = "test-admin-token-0123456789";
    /// What a failing store reports; it must never reach a client.
    const INTERNAL: &str = "redis 10.1.2.3:6379 refused";

    /// An in-memory store with the `StateStore` contract, a switch that makes every call
    /// fail, and a count of writes.
    #[derive(Default)]
    struct MemStore {
        data: Mutex<Mem>,
        fail: AtomicBool,
        writes: AtomicUsize,
    }

    #[derive(Default)]
    struct Mem {
        accounts: HashMap<String, AccountState>,
        revoked: HashMap<String, Revocation>,
        certs: HashMap<String, CertRecord>,
        tickets: HashMap<String, TicketRecord>,
        crl_number: u64,
    }

    impl MemStore {
        fn read<T: Send + 'static>(
            &self,
            f: impl FnOnce(&Mem) -> T,
        ) -> BoxFut<'_, Result<T, StoreError>> {
            let out = if self.fail.load(Ordering::SeqCst) {
                Err(StoreError::Unavailable(INTERNAL.into()))
            } else {
                Ok(f(&self.data.lock().unwrap()))
            };
            Box::pin(std::future::ready(out))
        }

        fn write<T: Send + 'static>(
            &self,
            f: impl FnOnce(&mut Mem) -> T,
        ) -> BoxFut<'_, Result<T, StoreError>> {
            let out = if self.fail.load(Ordering::SeqCst) {
                Err(StoreError::Unavailable(INTERNAL.into()))
            } else {
                self.writes.fetch_add(1, Ordering::SeqCst);
                Ok(f(&mut self.data.lock().unwrap()))
            };
            Box::pin(std::future::ready(out))
        }
    }

    impl StateStore for MemStore {
        fn ping(&self) -> BoxFut<'_, Result<(), StoreError>> {
            self.read(|_| ())
        }
        fn account(&self, account: &str) -> BoxFut<'_, Result<Option<AccountState>, StoreError>> {
            let account = account.to_string();
            self.read(move |m| m.accounts.get(&account).cloned())
        }
        fn enable_two_factor(
            &self,
            account: &str,
            now: UnixTime,
        ) -> BoxFut<'_, Result<AccountState, StoreError>> {
            let account = account.to_string();
            self.write(move |m| {
                let a = m.accounts.entry(account.clone()).or_insert(AccountState {
                    account,
                    generation: 1,
                    two_factor: false,
                    created_at: now,
                    reset_at: None,
                });
                a.two_factor = true;
                a.clone()
            })
        }
        fn reset_account(
            &self,
            account: &str,
            now: UnixTime,
        ) -> BoxFut<'_, Result<AccountState, StoreError>> {
            let account = account.to_string();
            self.write(move |m| {
                let a = m.accounts.entry(account.clone()).or_insert(AccountState {
                    account: account.clone(),
                    generation: 1,
                    two_factor: false,
                    created_at: now,
                    reset_at: None,
                });
                a.generation += 1;
                a.reset_at = Some(now);
                let a = a.clone();
                m.tickets.retain(|_, t| t.account != account);
                a
            })
        }
        fn revocation(&self, serial: &str) -> BoxFut<'_, Result<Option<Revocation>, StoreError>> {
            let serial = serial.to_string();
            self.read(move |m| m.revoked.get(&serial).cloned())
        }
        fn revoke(&self, r: Revocation) -> BoxFut<'_, Result<Revocation, StoreError>> {
            self.write(move |m| m.revoked.entry(r.serial.clone()).or_insert(r).clone())
        }
        fn revocations(&self) -> BoxFut<'_, Result<Vec<Revocation>, StoreError>> {
            self.read(|m| m.revoked.values().cloned().collect())
        }
        fn record_certificate(&self, cert: CertRecord) -> BoxFut<'_, Result<(), StoreError>> {
            self.write(move |m| {
                m.certs.insert(cert.serial.clone(), cert);
            })
        }
        fn certificate(&self, serial: &str) -> BoxFut<'_, Result<Option<CertRecord>, StoreError>> {
            let serial = serial.to_string();
            self.read(move |m| m.certs.get(&serial).cloned())
        }
        fn certificates_of(
            &self,
            account: &str,
        ) -> BoxFut<'_, Result<Vec<CertRecord>, StoreError>> {
            let account = account.to_string();
            self.read(move |m| {
                m.certs
                    .values()
                    .filter(|c| c.account == account)
                    .cloned()
                    .collect()
            })
        }
        fn put_ticket(&self, t: TicketRecord) -> BoxFut<'_, Result<(), StoreError>> {
            self.write(move |m| {
                m.tickets.insert(t.hash.clone(), t);
            })
        }
        fn peek_ticket(
            &self,
            hash: &str,
            now: UnixTime,
        ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>> {
            let hash = hash.to_string();
            self.write(move |m| m.tickets.get(&hash).filter(|t| t.expires_at > now).cloned())
        }
        fn consume_ticket(
            &self,
            hash: &str,
            now: UnixTime,
        ) -> BoxFut<'_, Result<Option<TicketRecord>, StoreError>> {
            let hash = hash.to_string();
            self.write(move |m| m.tickets.remove(&hash).filter(|t| t.expires_at > now))
        }
        fn next_crl_number(&self) -> BoxFut<'_, Result<u64, StoreError>> {
            self.write(|m| {
                m.crl_number += 1;
                m.crl_number
            })
        }
        fn sweep(&self, now: UnixTime) -> BoxFut<'_, Result<u64, StoreError>> {
            self.write(move |m| {
                let before = m.tickets.len();
                m.tickets.retain(|_, t| t.expires_at > now);
                (before - m.tickets.len()) as u64
            })
        }
    }

    struct Harness {
        store: Arc<MemStore>,
        state: Arc<AdminState>,
        dir: tempfile::TempDir,
    }

    fn harness(enrollment: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("admin-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let store = Arc::new(MemStore::default());
        let metrics = Metrics::new();
        let cfg = StateConfig {
            backend: StateBackend::Embedded {
                path: dir.path().join("unused.db"),
            },
            cache: CacheConfig {
                ttl: Duration::from_secs(10),
                max_entries: 1000,
            },
            on_error: OnError::FailClosed,
            max_stale: Duration::from_secs(300),
        };
        let cache = Arc::new(StateCache::new(store.clone(), &cfg, metrics.clone()));
        let enrollment = enrollment.then(|| EnrollmentInfo {
            public_url: "https://gw.example:8443".into(),
            ticket_ttl: Duration::from_secs(3600),
        });
        let state = Arc::new(AdminState::new(cache, metrics, token_file, enrollment));
        Harness { store, state, dir }
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        json: Value,
    }

    async fn send_with(
        h: &Harness,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a);
        }
        let resp = handle(&h.state, b.body(Full::new(Bytes::from(body))).unwrap()).await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        Answer {
            status: parts.status,
            headers: parts.headers,
            json,
        }
    }

    async fn send(h: &Harness, method: Method, path: &str, body: &str) -> Answer {
        send_with(
            h,
            method,
            path,
            Some(&format!("Bearer {TOKEN}")),
            body.as_bytes().to_vec(),
        )
        .await
    }

    fn assert_error(a: &Answer, status: StatusCode, code: &str) {
        assert_eq!(a.status, status, "{}", a.json);
        assert_eq!(a.json["error"], code, "{}", a.json);
        assert!(
            a.json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            a.json
        );
        assert_eq!(a.headers[CONTENT_TYPE], JSON);
    }

    fn consume(h: &Harness, ticket: &str) -> Option<TicketRecord> {
        let mut data = h.store.data.lock().unwrap();
        data.tickets
            .remove(&ticket::hash(ticket))
            .filter(|t| t.expires_at > now())
    }

    fn cert(serial: &str, account: &str, generation: u64) -> CertRecord {
        CertRecord {
            serial: serial.into(),
            account: account.into(),
            generation,
            fingerprint: format!("fp-{serial}"),
            not_after: 1_900_000_000,
            issued_at: 1_800_000_000 + generation as i64,
        }
    }

    #[test]
    fn constant_time_token_compare() {
        assert!(tokens_equal("abc", "abc"));
        assert!(tokens_equal(TOKEN, TOKEN));
        assert!(!tokens_equal("abc", "abd"));
        assert!(!tokens_equal("abc", "abcd"));
        assert!(!tokens_equal("", "abc"));
        assert!(!tokens_equal("ABC", "abc"));
    }

    #[test]
    fn bearer_header_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer   abc "));
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
    }

    #[tokio::test]
    async fn missing_or_wrong_token_is_401_and_changes_nothing() {
        let h = harness(true);
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic dGVzdA=="),
            Some(&*format!("Bearer {TOKEN}x")),
        ] {
            let a = send_with(&h, Method::POST, "/v1/accounts/alice/reset", auth, vec![]).await;
            assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
            assert_eq!(a.headers[WWW_AUTHENTICATE], "Bearer");
        }
        // Unknown routes do not reveal themselves without a token either.
        let a = send_with(&h, Method::GET, "/v1/nothing", None, vec![]).await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(h.store.writes.load(Ordering::SeqCst), 0);
        assert!(h.store.data.lock().unwrap().accounts.is_empty());
        let text = h.state.metrics.encode();
        assert!(
            text.contains(
                r#"certgate_admin_requests_total{route="/v1/accounts/{id}/reset",status="401"} 4"#
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn token_file_is_reread_and_fails_closed() {
        let h = harness(true);
        let file = h.dir.path().join("admin-token");
        assert_eq!(
            send(&h, Method::GET, "/v1/accounts/nobody", "")
                .await
                .status,
            StatusCode::NOT_FOUND
        );

        std::fs::write(&file, "  \n").unwrap();
        let a = send(&h, Method::GET, "/v1/accounts/nobody", "").await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
        // An empty presented token does not match an empty file either.
        let a = send_with(
            &h,
            Method::GET,
            "/v1/accounts/nobody",
            Some("Bearer "),
            vec![],
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);

        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            send(&h, Method::GET, "/v1/accounts/nobody", "")
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );

        // Rotation takes effect on the next request, no reload needed.
        std::fs::write(&file, "rotated-token").unwrap();
        assert_eq!(
            send(&h, Method::GET, "/v1/accounts/nobody", "")
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
        let a = send_with(
            &h,
            Method::GET,
            "/v1/accounts/nobody",
            Some("Bearer rotated-token"),
            vec![],
        )
        .await;
        assert_error(&a, StatusCode::NOT_FOUND, "account_not_found");
    }

    #[tokio::test]
    async fn enable_two_factor_returns_a_working_ticket() {
        let h = harness(true);
        let a = send(&h, Method::POST, "/v1/accounts/alice/two-factor", "").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
        assert_eq!(a.headers[CACHE_CONTROL], "no-store");
        assert_eq!(a.json["account"], "alice");
        assert_eq!(a.json["generation"], 1);
        assert_eq!(a.json["two_factor"], true);
        assert!(a.json["reset_at"].is_null());
        let ticket = a.json["ticket"].as_str().unwrap().to_string();
        assert_eq!(ticket.len(), 43);
        assert_eq!(
            a.json["enroll_url"],
            format!("https://gw.example:8443/.certgate/enroll?ticket={ticket}")
        );
        assert!(a.json["ticket_expires_at"].as_str().unwrap().ends_with('Z'));
        assert!(h.store.data.lock().unwrap().accounts["alice"].two_factor);
        let t = consume(&h, &ticket).expect("the ticket is stored under its hash");
        assert_eq!((t.account.as_str(), t.generation), ("alice", 1));
        assert!(t.expires_at > now() + 3500 && t.expires_at <= now() + 3600);
        // `{}` is an acceptable body too; a second enable keeps the generation.
        let a = send(&h, Method::POST, "/v1/accounts/alice/two-factor", "{}").await;
        assert_eq!(
            (a.status, a.json["generation"].as_u64()),
            (StatusCode::OK, Some(1))
        );
    }

    #[tokio::test]
    async fn enable_without_enrollment_says_why_there_is_no_ticket() {
        let h = harness(false);
        let a = send(&h, Method::POST, "/v1/accounts/alice/two-factor", "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json["two_factor"], true);
        assert!(
            a.json.get("ticket").is_none() && a.json.get("enroll_url").is_none(),
            "{}",
            a.json
        );
        assert!(
            a.json["note"]
                .as_str()
                .unwrap()
                .contains("enrollment is disabled")
        );
        assert!(h.store.data.lock().unwrap().tickets.is_empty());
        let a = send(&h, Method::POST, "/v1/accounts/alice/tickets", "").await;
        assert_error(&a, StatusCode::CONFLICT, "enrollment_disabled");
    }

    #[tokio::test]
    async fn reset_bumps_generation_and_voids_open_tickets() {
        let h = harness(true);
        let first = send(&h, Method::POST, "/v1/accounts/alice/two-factor", "").await;
        let old = first.json["ticket"].as_str().unwrap().to_string();
        let a = send(&h, Method::POST, "/v1/accounts/alice/reset", "").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
        assert_eq!(a.json["generation"], 2);
        assert!(a.json["reset_at"].as_str().is_some());
        assert_eq!(h.store.data.lock().unwrap().accounts["alice"].generation, 2);
        assert!(
            consume(&h, &old).is_none(),
            "a reset must void the open ticket"
        );
        let new = a.json["ticket"].as_str().unwrap();
        assert_ne!(new, old);
        assert_eq!(consume(&h, new).map(|t| t.generation), Some(2));
        assert!(a.json["enroll_url"].as_str().unwrap().ends_with(new));
    }

    #[tokio::test]
    async fn reset_of_an_unknown_account_creates_it_and_issues_a_ticket() {
        let h = harness(true);
        let a = send(&h, Method::POST, "/v1/accounts/bob/reset", "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            (
                a.json["generation"].as_u64(),
                a.json["two_factor"].as_bool()
            ),
            (Some(2), Some(false))
        );
        let t = a.json["ticket"]
            .as_str()
            .expect("a reset answers with a ticket");
        assert_eq!(consume(&h, t).map(|t| t.generation), Some(2));
        assert!(a.json.get("note").is_none());
    }

    #[tokio::test]
    async fn tickets_route() {
        let h = harness(true);
        let a = send(&h, Method::POST, "/v1/accounts/carol/tickets", "").await;
        assert_error(&a, StatusCode::NOT_FOUND, "account_not_found");
        send(&h, Method::POST, "/v1/accounts/carol/reset", "").await;
        let a = send(&h, Method::POST, "/v1/accounts/carol/tickets", "").await;
        assert_error(&a, StatusCode::CONFLICT, "two_factor_disabled");
        send(&h, Method::POST, "/v1/accounts/carol/two-factor", "").await;
        let a = send(&h, Method::POST, "/v1/accounts/carol/tickets", "").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
        assert_eq!(a.json["generation"], 2);
        let t = consume(&h, a.json["ticket"].as_str().unwrap()).unwrap();
        assert_eq!((t.account.as_str(), t.generation), ("carol", 2));
    }

    #[tokio::test]
    async fn get_account() {
        let h = harness(true);
        let a = send(&h, Method::GET, "/v1/accounts/alice", "").await;
        assert_error(&a, StatusCode::NOT_FOUND, "account_not_found");

        send(&h, Method::POST, "/v1/accounts/alice/two-factor", "").await;
        h.store
            .record_certificate(cert("aa01", "alice", 1))
            .await
            .unwrap();
        h.store
            .record_certificate(cert("bb02", "alice", 2))
            .await
            .unwrap();
        h.store
            .record_certificate(cert("cc03", "mallory", 1))
            .await
            .unwrap();
        send(&h, Method::POST, "/v1/certificates/aa01/revoke", "").await;

        let a = send(&h, Method::GET, "/v1/accounts/alice", "").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
        assert_eq!(a.json["account"], "alice");
        assert_eq!(a.json["two_factor"], true);
        assert!(a.json["created_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            a.json["certificates"],
            json!([
                {"serial": "aa01", "generation": 1, "fingerprint": "fp-aa01",
                 "not_after": rfc3339(1_900_000_000), "revoked": true},
                {"serial": "bb02", "generation": 2, "fingerprint": "fp-bb02",
                 "not_after": rfc3339(1_900_000_000), "revoked": false},
            ])
        );
    }

    #[tokio::test]
    async fn account_ids_are_decoded_then_validated() {
        let h = harness(true);
        let a = send(
            &h,
            Method::POST,
            "/v1/accounts/alice%40example.com/two-factor",
            "",
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json["account"], "alice@example.com");
        for bad in [
            "a%20b",
            "a%2Fb",
            "a%2F..",
            "%FF",
            "",
            "a%00",
            "%C3%A9",
            &"x".repeat(129),
        ] {
            let a = send(&h, Method::POST, &format!("/v1/accounts/{bad}/reset"), "").await;
            assert_error(&a, StatusCode::BAD_REQUEST, "invalid_account");
            let a = send(&h, Method::GET, &format!("/v1/accounts/{bad}"), "").await;
            assert_error(&a, StatusCode::BAD_REQUEST, "invalid_account");
        }
        assert_eq!(h.store.data.lock().unwrap().accounts.len(), 1);
        // `..` matches the account pattern; it is an id here, never a path step.
        let a = send(&h, Method::GET, "/v1/accounts/%2E%2E", "").await;
        assert_error(&a, StatusCode::NOT_FOUND, "account_not_found");
    }

    #[tokio::test]
    async fn revoke_unknown_serial_is_idempotent() {
        let h = harness(true);
        let a = send(
            &h,
            Method::POST,
            "/v1/certificates/0a0b/revoke",
            r#"{"reason":"keyCompromise"}"#,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
        assert_eq!(a.json["serial"], "0a0b");
        assert_eq!(a.json["revoked"], true);
        assert_eq!(a.json["reason"], "keyCompromise");
        assert!(a.json["account"].is_null());
        let revoked_at = a.json["revoked_at"].clone();
        // Backdate the record: a second revoke must return it untouched, not a new one.
        h.store
            .data
            .lock()
            .unwrap()
            .revoked
            .get_mut("0a0b")
            .unwrap()
            .revoked_at = 1_700_000_000;
        let b = send(
            &h,
            Method::POST,
            "/v1/certificates/0a0b/revoke",
            r#"{"reason":"superseded"}"#,
        )
        .await;
        assert_eq!(b.status, StatusCode::OK);
        assert_eq!(b.json["revoked_at"], rfc3339(1_700_000_000));
        assert_eq!(b.json["reason"], "keyCompromise");
        assert!(revoked_at.as_str().unwrap().ends_with('Z'));
        let g = send(&h, Method::GET, "/v1/certificates/0a0b", "").await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(
            (g.json["revoked"].as_bool(), g.json["account"].is_null()),
            (Some(true), true)
        );
    }

    #[tokio::test]
    async fn revoke_accepts_openssl_serial_form_and_uses_the_registry() {
        let h = harness(true);
        h.store
            .record_certificate(cert("abcd", "alice", 1))
            .await
            .unwrap();
        for path in [
            "/v1/certificates/AB:CD/revoke",
            "/v1/certificates/AB%3ACD/revoke",
            "/v1/certificates/00ABCD/revoke",
        ] {
            let a = send(&h, Method::POST, path, "").await;
            assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.json);
            assert_eq!(a.json["serial"], "abcd");
            assert_eq!(a.json["reason"], "unspecified");
            assert_eq!(a.json["account"], "alice");
        }
        let r = h.store.data.lock().unwrap().revoked["abcd"].clone();
        assert_eq!(r.not_after, Some(1_900_000_000));
        assert_eq!(h.store.data.lock().unwrap().revoked.len(), 1);
    }

    #[tokio::test]
    async fn get_certificate() {
        let h = harness(true);
        let a = send(&h, Method::GET, "/v1/certificates/beef", "").await;
        assert_error(&a, StatusCode::NOT_FOUND, "certificate_not_found");
        h.store
            .record_certificate(cert("beef", "alice", 3))
            .await
            .unwrap();
        let a = send(&h, Method::GET, "/v1/certificates/BE:EF", "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.json,
            json!({
                "serial": "beef", "account": "alice", "generation": 3, "fingerprint": "fp-beef",
                "not_after": rfc3339(1_900_000_000), "issued_at": rfc3339(1_800_000_003),
                "revoked": false, "reason": null, "revoked_at": null,
            })
        );
        let a = send(&h, Method::GET, "/v1/certificates/xyz", "").await;
        assert_error(&a, StatusCode::BAD_REQUEST, "invalid_serial");
    }

    #[tokio::test]
    async fn bad_bodies_are_400() {
        let h = harness(true);
        let a = send(&h, Method::POST, "/v1/certificates/01/revoke", "{not json").await;
        assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
        let a = send(
            &h,
            Method::POST,
            "/v1/certificates/01/revoke",
            r#"{"reason":"stolen"}"#,
        )
        .await;
        assert_error(&a, StatusCode::BAD_REQUEST, "invalid_reason");
        let msg = a.json["message"].as_str().unwrap();
        assert!(
            msg.contains("keyCompromise") && msg.contains("superseded"),
            "{msg}"
        );
        let a = send(
            &h,
            Method::POST,
            "/v1/certificates/01/revoke",
            r#"{"reason":7}"#,
        )
        .await;
        assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
        let a = send(
            &h,
            Method::POST,
            "/v1/certificates/01/revoke",
            r#"{"reasn":"superseded"}"#,
        )
        .await;
        assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
        let a = send(
            &h,
            Method::POST,
            "/v1/accounts/alice/two-factor",
            r#"{"x":1}"#,
        )
        .await;
        assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
        let a = send(&h, Method::POST, "/v1/certificates/zz/revoke", "").await;
        assert_error(&a, StatusCode::BAD_REQUEST, "invalid_serial");
        // Reason names are matched case-insensitively.
        let a = send(
            &h,
            Method::POST,
            "/v1/certificates/01/revoke",
            r#"{"reason":"cacompromise"}"#,
        )
        .await;
        assert_eq!(
            (a.status, a.json["reason"].as_str()),
            (StatusCode::OK, Some("cACompromise"))
        );
        assert_eq!(h.store.data.lock().unwrap().revoked.len(), 1);
        assert!(h.store.data.lock().unwrap().accounts.is_empty());
    }

    #[tokio::test]
    async fn oversized_body_is_413() {
        let h = harness(true);
        let big = format!(
            r#"{{"reason":"superseded","pad":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        let a = send_with(
            &h,
            Method::POST,
            "/v1/certificates/01/revoke",
            Some(&format!("Bearer {TOKEN}")),
            big.into_bytes(),
        )
        .await;
        assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        // Exactly at the limit is read (and then refused for its content, not its size).
        let at_limit = vec![b' '; MAX_BODY_BYTES];
        let a = send_with(
            &h,
            Method::POST,
            "/v1/certificates/01/revoke",
            Some(&format!("Bearer {TOKEN}")),
            at_limit,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        // A declared length over the limit is refused before reading.
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/certificates/02/revoke")
            .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(CONTENT_LENGTH, "10000000")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        assert_eq!(
            handle(&h.state, req).await.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert!(!h.store.data.lock().unwrap().revoked.contains_key("02"));
    }

    #[tokio::test]
    async fn unknown_route_and_wrong_method() {
        let h = harness(true);
        for path in [
            "/",
            "/v1",
            "/v1/accounts",
            "/v1/accounts/alice/other",
            "/v2/accounts/alice",
            "/v1/accounts/alice/",
        ] {
            let a = send(&h, Method::GET, path, "").await;
            assert_error(&a, StatusCode::NOT_FOUND, "not_found");
        }
        let a = send(&h, Method::GET, "/v1/accounts/alice/reset", "").await;
        assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_eq!(a.headers[ALLOW], "POST");
        let a = send(&h, Method::DELETE, "/v1/accounts/alice", "").await;
        assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_eq!(a.headers[ALLOW], "GET");
        let a = send_with(&h, Method::POST, "/healthz", None, vec![]).await;
        assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_eq!(h.store.writes.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn store_failure_is_503_without_internals() {
        let h = harness(true);
        h.store.fail.store(true, Ordering::SeqCst);
        for (method, path) in [
            (Method::POST, "/v1/accounts/alice/two-factor"),
            (Method::POST, "/v1/accounts/alice/reset"),
            (Method::POST, "/v1/accounts/alice/tickets"),
            (Method::GET, "/v1/accounts/alice"),
            (Method::POST, "/v1/certificates/01/revoke"),
            (Method::GET, "/v1/certificates/01"),
        ] {
            let a = send(&h, method, path, "").await;
            assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
            assert!(!a.json.to_string().contains("10.1.2.3"), "{}", a.json);
        }
    }

    #[tokio::test]
    async fn probes_need_no_token() {
        let h = harness(true);
        let a = send_with(&h, Method::GET, "/healthz", None, vec![]).await;
        assert_eq!(
            (a.status, a.json.clone()),
            (StatusCode::OK, json!({"status": "ok"}))
        );
        // Healthz does not depend on the store.
        h.store.fail.store(true, Ordering::SeqCst);
        assert_eq!(
            send_with(&h, Method::GET, "/healthz", None, vec![])
                .await
                .status,
            StatusCode::OK
        );
        h.store.fail.store(false, Ordering::SeqCst);
        let a = send_with(&h, Method::GET, "/readyz", None, vec![]).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(h.state.cache.ready());
    }

    #[tokio::test]
    async fn readyz_is_503_until_the_store_answers() {
        let h = harness(true);
        h.store.fail.store(true, Ordering::SeqCst);
        let a = send_with(&h, Method::GET, "/readyz", None, vec![]).await;
        assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
        let req = Request::builder()
            .uri("/readyz")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = handle_metrics(&h.state.metrics, &h.state.cache, req).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        // The probe pings the store itself, so readiness follows once it answers.
        h.store.fail.store(false, Ordering::SeqCst);
        assert_eq!(
            send_with(&h, Method::GET, "/readyz", None, vec![])
                .await
                .status,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn metrics_handler() {
        let h = harness(true);
        send(&h, Method::GET, "/v1/accounts/nobody", "").await;
        let req = Request::builder()
            .uri("/metrics")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = handle_metrics(&h.state.metrics, &h.state.cache, req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[CONTENT_TYPE], OPENMETRICS);
        let text = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(
            text.contains(
                r#"certgate_admin_requests_total{route="/v1/accounts/{id}",status="404"} 1"#
            ),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        for (method, path, status) in [
            (Method::GET, "/healthz", StatusCode::OK),
            (Method::GET, "/readyz", StatusCode::OK),
            (Method::GET, "/v1/accounts/alice", StatusCode::NOT_FOUND),
            (Method::POST, "/metrics", StatusCode::METHOD_NOT_ALLOWED),
        ] {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(Full::new(Bytes::new()))
                .unwrap();
            assert_eq!(
                handle_metrics(&h.state.metrics, &h.state.cache, req)
                    .await
                    .status(),
                status,
                "{path}"
            );
        }
    }

    /// Collects formatted log output for one test.
    #[derive(Clone, Default)]
    struct LogBuf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for LogBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
        type Writer = LogBuf;
        fn make_writer(&'a self) -> LogBuf {
            self.clone()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_audit_line_per_change_without_secrets() {
        let logs = LogBuf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let h = harness(true);
        let mut req = Request::builder()
            .method(Method::POST)
            .uri("/v1/accounts/alice/two-factor")
            .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        req.extensions_mut()
            .insert(Peer("127.0.0.9:5555".parse().unwrap()));
        let resp = handle(&h.state, req).await;
        let body: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        let ticket = body["ticket"].as_str().unwrap().to_string();
        send(
            &h,
            Method::POST,
            "/v1/certificates/AB:CD/revoke",
            r#"{"reason":"keyCompromise"}"#,
        )
        .await;
        send(&h, Method::GET, "/v1/accounts/alice", "").await;
        send_with(
            &h,
            Method::POST,
            "/v1/accounts/alice/reset",
            Some("Bearer nope"),
            vec![],
        )
        .await;

        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let audit: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("certgate::audit"))
            .collect();
        assert_eq!(audit.len(), 2, "{text}");
        assert!(
            audit[0].contains("action=\"enable_two_factor\"")
                || audit[0].contains("action=enable_two_factor"),
            "{text}"
        );
        assert!(
            audit[0].contains("alice") && audit[0].contains("127.0.0.9:5555"),
            "{text}"
        );
        assert!(audit[0].contains("ticket_issued=true"), "{text}");
        assert!(
            audit[1].contains("revoke")
                && audit[1].contains("abcd")
                && audit[1].contains("keyCompromise"),
            "{text}"
        );
        assert!(
            !text.contains(&ticket),
            "the ticket leaked into the logs:\n{text}"
        );
        assert!(
            !text.contains(TOKEN),
            "the token leaked into the logs:\n{text}"
        );
        assert!(text.contains("admin request refused"), "{text}");
    }

    /// Serves `h`'s admin API on a fresh loopback port; returns the base URL, a shutdown
    /// trigger and the server task.
    async fn serve_on_loopback(
        h: &Harness,
    ) -> (
        String,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_admin(listener, h.state.clone(), async {
            let _ = rx.await;
        }));
        (url, tx, task)
    }

    #[tokio::test]
    async fn admin_client_against_a_served_listener() {
        let h = harness(true);
        let (url, stop, task) = serve_on_loopback(&h).await;

        let enable = AdminCommand::Enable {
            account: "alice@example.com".into(),
        };
        let v = client::run(&url, TOKEN, &enable).await.unwrap();
        let ticket = v["ticket"].as_str().unwrap();
        let text = client::render(&enable, &v);
        assert!(
            text.contains("Two-factor enabled for account alice@example.com (generation 1)"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "https://gw.example:8443/.certgate/enroll?ticket={ticket}"
            )),
            "{text}"
        );
        assert!(consume(&h, ticket).is_some());

        h.store
            .record_certificate(cert("abcd", "alice@example.com", 1))
            .await
            .unwrap();
        let v = client::revoke(&url, TOKEN, "AB:CD", Some("keyCompromise"))
            .await
            .unwrap();
        assert_eq!(
            (v["serial"].as_str(), v["reason"].as_str()),
            (Some("abcd"), Some("keyCompromise"))
        );

        let reset = client::reset(&url, TOKEN, "alice@example.com")
            .await
            .unwrap();
        assert_eq!(reset["generation"], 2);
        let status_cmd = AdminCommand::Status {
            account: "alice@example.com".into(),
        };
        let v = client::run(&url, TOKEN, &status_cmd).await.unwrap();
        let text = client::render(&status_cmd, &v);
        assert!(
            text.contains("generation  2") && text.contains("two-factor  enabled"),
            "{text}"
        );
        assert!(text.contains("abcd") && text.contains("revoked"), "{text}");

        let v = client::ticket(&url, TOKEN, "alice@example.com")
            .await
            .unwrap();
        assert_eq!(v["generation"], 2);
        let v = client::certificate_status(&url, TOKEN, "abcd")
            .await
            .unwrap();
        assert_eq!(v["revoked"], true);

        // Errors: the server's code and message come through; a bad token is named as such.
        let err = client::status(&url, TOKEN, "nobody").await.unwrap_err();
        match &err {
            ClientError::Api { status, code, .. } => {
                assert_eq!(
                    (*status, code.as_str()),
                    (StatusCode::NOT_FOUND, "account_not_found")
                )
            }
            other => panic!("{other:?}"),
        }
        let err = client::status(&url, "wrong", "alice").await.unwrap_err();
        assert!(matches!(err, ClientError::Unauthorized));
        assert_eq!(
            err.to_string(),
            "admin token rejected (check admin.token_file)"
        );
        let (status, v) = client::call(&url, "", Method::GET, "/healthz", None)
            .await
            .unwrap();
        assert_eq!((status, v), (StatusCode::OK, json!({"status": "ok"})));

        // Shutdown: the server returns promptly and stops accepting.
        stop.send(()).unwrap();
        tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
        let err = client::call(&url, TOKEN, Method::GET, "/healthz", None)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    }

    /// Sends raw bytes over one connection and returns the whole answer.
    async fn raw_http(addr: &str, request: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn oversized_body_over_http_is_413() {
        let h = harness(true);
        let (url, stop, task) = serve_on_loopback(&h).await;
        let addr = url.trim_start_matches("http://");
        let head = format!(
            "POST /v1/certificates/01/revoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        let answer = raw_http(addr, head.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn in_flight_request_finishes_during_shutdown() {
        let h = harness(true);
        let (url, stop, task) = serve_on_loopback(&h).await;
        let addr = url.trim_start_matches("http://").to_string();
        // Send the head now and the body after shutdown has begun.
        let body = r#"{"reason":"superseded"}"#;
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/certificates/0c/revoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(body.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&out);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(
            h.store.data.lock().unwrap().revoked["0c"].reason,
            RevocationReason::Superseded
        );
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn metrics_listener_over_http() {
        let h = harness(true);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_metrics(
            listener,
            h.state.metrics.clone(),
            h.state.cache.clone(),
            async {
                let _ = rx.await;
            },
        ));
        let answer = raw_http(
            &addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains(&format!("content-type: {OPENMETRICS}")),
            "{answer}"
        );
        assert!(answer.contains("certgate_state_store_up"), "{answer}");
        let answer = raw_http(
            &addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains(r#"{"status":"ok"}"#),
            "{answer}"
        );
        let answer = raw_http(
            &addr,
            b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // The admin API is not on this listener.
        let answer = raw_http(
            &addr,
            b"GET /v1/accounts/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        tx.send(()).unwrap();
        task.await.unwrap();
    }
}
