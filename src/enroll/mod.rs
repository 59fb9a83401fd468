//! certgate's own endpoints under `/.certgate/`: self-service enrollment with one-time
//! tickets, the enrollment CA certificate and its CRL.
//!
//! | route | answer |
//! |---|---|
//! | `GET /.certgate/enroll?ticket=T` | the Client Certificate Initialization page (HTML, no script) |
//! | `POST /.certgate/enroll/pkcs12` | form `ticket`, `passphrase` → PKCS#12 attachment (key made here, never stored) |
//! | `POST /.certgate/enroll/csr` | `Authorization: Bearer T`, PEM or DER PKCS#10 → PEM chain |
//! | `GET /.certgate/ca.pem` | the enrollment CA certificate |
//! | `GET /.certgate/crl` | DER CRL of revoked certgate-issued serials, signed by the enrollment CA |
//!
//! A ticket is consumed (atomically, by the store) only after the rest of the request was
//! found good, so a bad passphrase or CSR changes nothing; if issuing fails after that, the
//! ticket is put back. A ticket whose generation is older than the account's is refused.
//! Failed ticket attempts are counted per client address (IPv6 by /64): the 11th within a
//! minute gets 429. Enrollment answers carry `Cache-Control: no-store` and
//! `Referrer-Policy: no-referrer` (the ticket is in the page's URL), and the page loads
//! nothing from anywhere (CSP). Tickets, passphrases and keys are never logged; one audit
//! line names each issued certificate.
//!
//! Neighbours: `proxy` routes every `/.certgate/…` request here with the client address;
//! `ca` issues and signs CRLs; `p12` packs bundles; `ticket` hashes; `state` holds tickets,
//! accounts, the registry of issued certificates and the CRL number; `pages` renders the
//! error pages.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::core::clock::now;
use crate::core::ticket;
use crate::http::auth::bearer_token;
use crate::http::body::{BodyError, read_limited};
use crate::http::pages::{self, escape_html};
use crate::metrics::{Metrics, Outcome, OutcomeLabels};
use crate::pki::ca::{self, CaError, CaIssuer, CrlEntry, CsrError};
use crate::state::cache::StateCache;
use crate::state::{CertRecord, Revocation, RevocationReason, StoreError, TicketRecord};

/// Largest accepted request body (CSR or form); larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Shortest accepted PKCS#12 passphrase, in characters.
pub const MIN_PASSPHRASE_CHARS: usize = 8;
/// Longest accepted passphrase, in characters (a bound, not a policy).
pub const MAX_PASSPHRASE_CHARS: usize = 1024;
/// Failed ticket attempts allowed per client address within [`FAILURE_WINDOW`].
pub const MAX_FAILED_ATTEMPTS: u32 = 10;
/// The rate-limiting window for failed ticket attempts.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Lifetime of a CRL (its `nextUpdate` − `thisUpdate`).
pub const CRL_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);
/// An unchanged CRL is signed anew when it is this old, well before its `nextUpdate`.
const CRL_REFRESH: Duration = Duration::from_secs(12 * 60 * 60);
/// The revocation list is read at most this often for `GET /crl`, however many ask.
const CRL_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The whole request body must arrive within this time.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("enrollment CA: {0}")]
    Ca(#[from] CaError),
}

/// The `/.certgate/` endpoints. Built once per configuration.
pub struct Enrollment {
    ca_pem: Option<Bytes>,
    /// `None` when `enrollment.enabled: false`: only 404s then.
    issuer: Option<Issuing>,
    cache: Arc<StateCache>,
    metrics: Metrics,
}

/// What enrollment needs when it is on.
struct Issuing {
    ca: Arc<CaIssuer>,
    /// The CA's common name, shown on the page so users recognise the certificate.
    ca_name: String,
    validity: Duration,
    public_url: String,
    /// Shared with the next configuration on a reload (same counters).
    failures: Arc<FailureLimiter>,
    /// Shared with the next configuration while the CA stays the same.
    crl: Arc<tokio::sync::Mutex<Option<CachedCrl>>>,
}

impl Enrollment {
    pub fn new(
        cfg: &Config,
        cache: Arc<StateCache>,
        metrics: Metrics,
    ) -> Result<Self, EnrollError> {
        Self::reloaded(cfg, cache, metrics, None)
    }

    /// Builds the endpoints for a reloaded configuration, keeping the failed-attempt
    /// counters of `previous` (a reload must not reset the rate limit) and its cached CRL
    /// while the CA is unchanged.
    pub fn reloaded(
        cfg: &Config,
        cache: Arc<StateCache>,
        metrics: Metrics,
        previous: Option<&Enrollment>,
    ) -> Result<Self, EnrollError> {
        let prev = previous.and_then(|p| p.issuer.as_ref());
        let mut ca_pem = None;
        let mut issuer = None;
        if let Some(e) = &cfg.enrollment
            && let Some(cert) = e.ca_cert.certs.first()
        {
            let ca = CaIssuer::from_der(cert, &e.ca_key.key, &e.ca_key.path)?;
            ca_pem = Some(Bytes::from(ca.cert_pem.clone()));
            let failures =
                prev.map_or_else(|| Arc::new(FailureLimiter::new()), |p| p.failures.clone());
            let crl = match prev {
                Some(p) if p.ca.cert_der == ca.cert_der => p.crl.clone(),
                _ => Arc::new(tokio::sync::Mutex::new(None)),
            };
            issuer = Some(Issuing {
                ca_name: common_name(&ca.cert_der),
                ca: Arc::new(ca),
                validity: e.validity,
                public_url: e.public_url.trim_end_matches('/').to_string(),
                failures,
                crl,
            });
        }
        Ok(Enrollment {
            ca_pem,
            issuer,
            cache,
            metrics,
        })
    }

    /// Handles `/.certgate{path}` (`path` is normalised, e.g. `/ca.pem`). `peer` is the
    /// client's address. Never fails: every outcome is a response.
    pub async fn handle(
        &self,
        path: &str,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let Some(issuing) = &self.issuer else {
            return pages::render(&pages::NOT_FOUND, req.headers());
        };
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        let post = *req.method() == Method::POST;
        match path {
            "/ca.pem" if get => {
                let pem = self.ca_pem.clone().unwrap_or_default();
                with_type(Response::new(Full::new(pem)), "application/x-pem-file")
            }
            "/crl" if get => self.crl(issuing).await,
            "/enroll" if get => self.page(issuing, peer, &req).await,
            "/enroll/pkcs12" if post => self.pkcs12(issuing, peer, req).await,
            "/enroll/csr" if post => self.csr(issuing, peer, req).await,
            "/ca.pem" | "/crl" | "/enroll" => method_not_allowed("GET, HEAD", req.headers()),
            "/enroll/pkcs12" | "/enroll/csr" => method_not_allowed("POST", req.headers()),
            _ => pages::render(&pages::NOT_FOUND, req.headers()),
        }
    }

    /// `GET /enroll?ticket=T`: the page, or why the link does not work.
    async fn page(
        &self,
        issuing: &Issuing,
        peer: SocketAddr,
        req: &Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let headers = req.headers();
        if issuing.failures.blocked(peer.ip()) {
            return refusal(Refusal::TooManyAttempts, headers);
        }
        let Some(presented) = query_param(req.uri().query().unwrap_or(""), "ticket") else {
            return refusal(Refusal::MissingTicket, headers);
        };
        let record = match self.peek_ticket(&presented).await {
            Ok(r) => r,
            Err(refused) => {
                if refused.is_ticket_failure() {
                    issuing.failures.failed(peer.ip());
                    tracing::info!(target: "certgate::enroll", %peer, reason = refused.token(), "enrollment page refused");
                }
                return refusal(refused, headers);
            }
        };
        enrollment_page(issuing, &record.account, &presented)
    }

    /// `POST /enroll/pkcs12`: key pair made here, certificate issued, PKCS#12 returned.
    async fn pkcs12(
        &self,
        issuing: &Issuing,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let headers = req.headers().clone();
        let result = self.pkcs12_inner(issuing, peer, req).await;
        self.finish(issuing, peer, "pkcs12", result, &headers)
    }

    async fn pkcs12_inner(
        &self,
        issuing: &Issuing,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        if issuing.failures.blocked(peer.ip()) {
            return Err(Refusal::TooManyAttempts);
        }
        let form_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form_type {
            return Err(Refusal::NotAForm);
        }
        let body = read_body(req).await?;
        let mut ticket_field = None;
        let mut passphrase = None;
        for (k, v) in form_fields(&body)? {
            match k.as_str() {
                "ticket" => ticket_field = Some(v),
                "passphrase" => passphrase = Some(v),
                _ => {}
            }
        }
        let presented = ticket_field
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::MissingTicket)?;
        let passphrase = passphrase.unwrap_or_default();
        let chars = passphrase.chars().count();
        if chars < MIN_PASSPHRASE_CHARS {
            return Err(Refusal::ShortPassphrase);
        }
        if chars > MAX_PASSPHRASE_CHARS {
            return Err(Refusal::LongPassphrase);
        }

        let record = self.use_ticket(&presented).await?;
        let ca = issuing.ca.clone();
        let (account, generation, validity) =
            (record.account.clone(), record.generation, issuing.validity);
        let made = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let key = ca::new_key().map_err(|e| e.to_string())?;
            let issued = ca
                .issue_client(&key, &account, generation, validity)
                .map_err(|e| e.to_string())?;
            let friendly = format!("{account} (certgate)");
            let p12 = crate::pki::p12::bundle(
                &friendly,
                &key.serialize_der(),
                &[&issued.cert_der, &ca.cert_der],
                &passphrase,
            )
            .map_err(|e| e.to_string())?;
            Ok((issued, p12))
        })
        .await;
        let (issued, p12) = match made {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(self.give_back(record, Refusal::Internal(e)).await),
            Err(e) => {
                return Err(self
                    .give_back(record, Refusal::Internal(e.to_string()))
                    .await);
            }
        };
        self.record(&record, &issued).await?;
        audit(peer, "pkcs12", &record, &issued);
        let mut resp = Response::new(Full::new(Bytes::from(p12)));
        let disposition = format!("attachment; filename=\"{}.p12\"", record.account);
        if let Ok(v) = HeaderValue::from_str(&disposition) {
            resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
        Ok(with_type(resp, "application/x-pkcs12"))
    }

    /// `POST /enroll/csr`: the CSR's public key certified, PEM chain returned.
    async fn csr(
        &self,
        issuing: &Issuing,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let headers = req.headers().clone();
        let result = self.csr_inner(issuing, peer, req).await;
        self.finish(issuing, peer, "csr", result, &headers)
    }

    async fn csr_inner(
        &self,
        issuing: &Issuing,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        if issuing.failures.blocked(peer.ip()) {
            return Err(Refusal::TooManyAttempts);
        }
        let presented = bearer_token(req.headers())
            .map(str::to_string)
            .ok_or(Refusal::MissingBearer)?;
        let body = read_body(req).await?;
        let der = csr_der(&body).map_err(Refusal::BadCsr)?;
        let spki = ca::csr_public_key(&der).map_err(Refusal::BadCsr)?;

        let record = self.use_ticket(&presented).await?;
        let issued = match issuing.ca.issue_client(
            &spki,
            &record.account,
            record.generation,
            issuing.validity,
        ) {
            Ok(i) => i,
            Err(e) => {
                return Err(self
                    .give_back(record, Refusal::Internal(e.to_string()))
                    .await);
            }
        };
        self.record(&record, &issued).await?;
        audit(peer, "csr", &record, &issued);
        let chain = format!("{}{}", issued.cert_pem, issuing.ca.cert_pem);
        Ok(with_type(
            Response::new(Full::new(Bytes::from(chain))),
            "application/pem-certificate-chain",
        ))
    }

    /// Counts the outcome and turns a refusal into its page; every answer gets the
    /// enrollment headers.
    fn finish(
        &self,
        issuing: &Issuing,
        peer: SocketAddr,
        method: &'static str,
        result: Result<Response<Full<Bytes>>, Refusal>,
        headers: &HeaderMap,
    ) -> Response<Full<Bytes>> {
        let outcome = if result.is_ok() {
            Outcome::success
        } else {
            Outcome::failure
        };
        self.metrics
            .enrollments
            .get_or_create(&OutcomeLabels { result: outcome })
            .inc();
        match result {
            Ok(resp) => no_store(resp),
            Err(refused) => {
                if refused.is_ticket_failure() {
                    issuing.failures.failed(peer.ip());
                }
                match &refused {
                    Refusal::Internal(detail) => {
                        tracing::error!(%peer, method, error = %detail, "enrollment failed")
                    }
                    Refusal::StoreUnavailable(e) => {
                        tracing::warn!(%peer, method, error = %e, "enrollment: state store unavailable")
                    }
                    other => {
                        tracing::info!(target: "certgate::enroll", %peer, method, reason = other.token(), "enrollment refused")
                    }
                }
                refusal(refused, headers)
            }
        }
    }

    /// Looks a ticket up without using it (for the page): it must exist, be unexpired and
    /// belong to the account's current generation.
    async fn peek_ticket(&self, presented: &str) -> Result<TicketRecord, Refusal> {
        if !plausible_ticket(presented) {
            return Err(Refusal::UnknownTicket);
        }
        let record = self
            .cache
            .store()
            .peek_ticket(&ticket::hash(presented), now())
            .await
            .map_err(Refusal::StoreUnavailable)?
            .ok_or(Refusal::UnknownTicket)?;
        self.check_generation(&record).await?;
        Ok(record)
    }

    /// Consumes a ticket for issuing: it must exist, be unexpired and belong to the
    /// account's current generation.
    async fn use_ticket(&self, presented: &str) -> Result<TicketRecord, Refusal> {
        let record = self.take_ticket(presented).await?;
        // A stale ticket stays consumed: it could never be used again anyway.
        self.check_generation(&record).await?;
        Ok(record)
    }

    async fn take_ticket(&self, presented: &str) -> Result<TicketRecord, Refusal> {
        if !plausible_ticket(presented) {
            return Err(Refusal::UnknownTicket);
        }
        self.cache
            .store()
            .consume_ticket(&ticket::hash(presented), now())
            .await
            .map_err(Refusal::StoreUnavailable)?
            .ok_or(Refusal::UnknownTicket)
    }

    async fn check_generation(&self, record: &TicketRecord) -> Result<(), Refusal> {
        let account = self
            .cache
            .store()
            .account(&record.account)
            .await
            .map_err(Refusal::StoreUnavailable)?;
        match account {
            Some(a) if a.generation == record.generation => Ok(()),
            _ => Err(Refusal::StaleTicket),
        }
    }

    /// Puts a consumed ticket back after an internal failure, so the user can try again.
    async fn give_back(&self, record: TicketRecord, refused: Refusal) -> Refusal {
        if let Err(e) = self.cache.store().put_ticket(record).await {
            tracing::error!(error = %e, "enrollment: could not restore the ticket after a failure");
        }
        refused
    }

    async fn record(&self, record: &TicketRecord, issued: &ca::Issued) -> Result<(), Refusal> {
        let cert = CertRecord {
            serial: issued.serial.clone(),
            account: record.account.clone(),
            generation: record.generation,
            fingerprint: issued.fingerprint.clone(),
            not_after: issued.not_after,
            issued_at: issued.issued_at,
        };
        if let Err(e) = self.cache.store().record_certificate(cert).await {
            // Not handed out: the certificate would be valid but unknown to the registry.
            return Err(self
                .give_back(record.clone(), Refusal::StoreUnavailable(e))
                .await);
        }
        Ok(())
    }

    /// `GET /crl`: the cached CRL, rebuilt (with the next CRL number) when the revocations
    /// changed or it is half-way to its `nextUpdate`.
    async fn crl(&self, issuing: &Issuing) -> Response<Full<Bytes>> {
        let mut cached = issuing.crl.lock().await;
        if let Some(c) = cached.as_ref()
            && c.checked_at.elapsed() < CRL_CHECK_INTERVAL
        {
            return crl_response(&c.der);
        }
        let store = self.cache.store();
        let revocations = match store.revocations().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "CRL: state store unavailable");
                return match cached.as_ref() {
                    Some(c) if c.next_update > now() => crl_response(&c.der),
                    _ => pages::json(&pages::STORE_UNAVAILABLE),
                };
            }
        };
        let digest = revocations_digest(&revocations);
        let t = now();
        if let Some(c) = cached.as_mut()
            && c.digest == digest
            && t - c.this_update < CRL_REFRESH.as_secs() as i64
        {
            c.checked_at = Instant::now();
            return crl_response(&c.der);
        }
        match self.build_crl(issuing, &revocations, t).await {
            Ok((der, next_update)) => {
                let resp = crl_response(&der);
                *cached = Some(CachedCrl {
                    der,
                    digest,
                    this_update: t,
                    next_update,
                    checked_at: Instant::now(),
                });
                resp
            }
            Err(e) => {
                tracing::error!(error = %e, "CRL could not be built");
                match cached.as_ref() {
                    Some(c) if c.next_update > t => crl_response(&c.der),
                    _ => pages::json(&pages::STORE_UNAVAILABLE),
                }
            }
        }
    }

    async fn build_crl(
        &self,
        issuing: &Issuing,
        revocations: &[Revocation],
        t: i64,
    ) -> Result<(Bytes, i64), String> {
        let store = self.cache.store();
        let mut entries = Vec::new();
        for r in revocations {
            // Only certificates certgate issued (its registry); other CAs publish their own.
            if store
                .certificate(&r.serial)
                .await
                .map_err(|e| e.to_string())?
                .is_none()
            {
                continue;
            }
            let Some(serial) = hex_bytes(&r.serial) else {
                continue;
            };
            entries.push(CrlEntry {
                serial,
                revoked_at: r.revoked_at,
                reason: crl_reason(r.reason),
            });
        }
        let number = store.next_crl_number().await.map_err(|e| e.to_string())?;
        let next_update = t + CRL_VALIDITY.as_secs() as i64;
        let der = issuing
            .ca
            .crl(number, &entries, t, next_update)
            .map_err(|e| e.to_string())?;
        tracing::info!(crl_number = number, entries = entries.len(), "CRL signed");
        Ok((Bytes::from(der), next_update))
    }
}

/// The last CRL built, with what it was built from.
struct CachedCrl {
    der: Bytes,
    digest: [u8; 32],
    this_update: i64,
    next_update: i64,
    checked_at: Instant,
}

fn crl_response(der: &Bytes) -> Response<Full<Bytes>> {
    let mut r = with_type(
        Response::new(Full::new(der.clone())),
        "application/pkix-crl",
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// SHA-256 over the sorted revocations: equal digests, equal CRL content.
fn revocations_digest(revocations: &[Revocation]) -> [u8; 32] {
    let mut lines: Vec<String> = revocations
        .iter()
        .map(|r| format!("{} {} {}", r.serial, r.revoked_at, r.reason.as_str()))
        .collect();
    lines.sort_unstable();
    let mut h = Sha256::new();
    for l in lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    h.finalize().into()
}

fn crl_reason(r: RevocationReason) -> Option<rcgen::RevocationReason> {
    use rcgen::RevocationReason as R;
    Some(match r {
        RevocationReason::Unspecified => return None,
        RevocationReason::KeyCompromise => R::KeyCompromise,
        RevocationReason::CaCompromise => R::CaCompromise,
        RevocationReason::AffiliationChanged => R::AffiliationChanged,
        RevocationReason::Superseded => R::Superseded,
        RevocationReason::CessationOfOperation => R::CessationOfOperation,
        RevocationReason::CertificateHold => R::CertificateHold,
        RevocationReason::RemoveFromCrl => R::RemoveFromCrl,
        RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        RevocationReason::AaCompromise => R::AaCompromise,
    })
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One audit line per issued certificate: never the ticket, the passphrase or a key.
fn audit(peer: SocketAddr, method: &'static str, record: &TicketRecord, issued: &ca::Issued) {
    tracing::info!(
        target: "certgate::audit",
        action = "enroll",
        method,
        account = %record.account,
        generation = record.generation,
        serial = %issued.serial,
        not_after = %crate::core::text::rfc3339(issued.not_after),
        %peer,
        "certificate issued"
    );
}

/// Why an enrollment request was refused; one mapping to status, token and text.
#[derive(Debug)]
enum Refusal {
    TooManyAttempts,
    MissingTicket,
    MissingBearer,
    /// Unknown, already used or expired: the store cannot tell these apart, and saying
    /// which would help a guesser.
    UnknownTicket,
    /// Made for an older generation of the account (a reset came after it).
    StaleTicket,
    ShortPassphrase,
    LongPassphrase,
    NotAForm,
    BadForm,
    TooLarge,
    BodyTimeout,
    BadBody,
    BadCsr(CsrError),
    StoreUnavailable(StoreError),
    /// Details are logged, not sent.
    Internal(String),
}

impl Refusal {
    /// Counts towards the per-address limit (a wrong ticket was presented).
    fn is_ticket_failure(&self) -> bool {
        matches!(self, Refusal::UnknownTicket | Refusal::StaleTicket)
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
            Refusal::MissingBearer => StatusCode::UNAUTHORIZED,
            Refusal::UnknownTicket | Refusal::StaleTicket => StatusCode::FORBIDDEN,
            Refusal::MissingTicket
            | Refusal::ShortPassphrase
            | Refusal::LongPassphrase
            | Refusal::BadForm
            | Refusal::BadBody
            | Refusal::BadCsr(_) => StatusCode::BAD_REQUEST,
            Refusal::NotAForm => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn token(&self) -> &'static str {
        match self {
            Refusal::TooManyAttempts => "too_many_attempts",
            Refusal::MissingTicket | Refusal::MissingBearer => "missing_ticket",
            Refusal::UnknownTicket => "invalid_ticket",
            Refusal::StaleTicket => "stale_ticket",
            Refusal::ShortPassphrase => "passphrase_too_short",
            Refusal::LongPassphrase => "passphrase_too_long",
            Refusal::NotAForm => "unsupported_media_type",
            Refusal::BadForm | Refusal::BadBody => "bad_request",
            Refusal::TooLarge => "payload_too_large",
            Refusal::BodyTimeout => "request_timeout",
            Refusal::BadCsr(CsrError::Malformed(_)) => "bad_csr",
            Refusal::BadCsr(CsrError::BadSignature) => "bad_csr_signature",
            Refusal::BadCsr(_) => "unsupported_key",
            Refusal::StoreUnavailable(_) => "store_unavailable",
            Refusal::Internal(_) => "internal_error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Refusal::TooManyAttempts => "Too many attempts",
            Refusal::MissingTicket | Refusal::MissingBearer => "Enrollment link incomplete",
            Refusal::UnknownTicket => "Enrollment link not valid",
            Refusal::StaleTicket => "Enrollment link replaced",
            Refusal::ShortPassphrase | Refusal::LongPassphrase => "Choose another passphrase",
            Refusal::NotAForm | Refusal::BadForm | Refusal::BadBody => "Bad request",
            Refusal::TooLarge => "Request too large",
            Refusal::BodyTimeout => "Request too slow",
            Refusal::BadCsr(_) => "Certificate request refused",
            Refusal::StoreUnavailable(_) => "Temporarily unavailable",
            Refusal::Internal(_) => "Enrollment failed",
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::TooManyAttempts => format!(
                "Too many enrollment attempts with links that do not work came from your address. Wait a minute ({} s) and try again.",
                FAILURE_WINDOW.as_secs()
            ),
            Refusal::MissingTicket => {
                "This address lacks its ticket (the part after \"ticket=\"). Open the complete link your administrator sent you.".into()
            }
            Refusal::MissingBearer => {
                "Send the enrollment ticket as \"Authorization: Bearer <ticket>\".".into()
            }
            Refusal::UnknownTicket => {
                "This enrollment link does not work: it was already used, it expired, or it was never valid.".into()
            }
            Refusal::StaleTicket => {
                "This enrollment link was replaced: your account's certificate was reset after the link was made.".into()
            }
            Refusal::ShortPassphrase => format!(
                "The passphrase must have at least {MIN_PASSPHRASE_CHARS} characters. Your link is still valid: go back and choose a longer one."
            ),
            Refusal::LongPassphrase => format!(
                "The passphrase may have at most {MAX_PASSPHRASE_CHARS} characters. Your link is still valid: go back and choose a shorter one."
            ),
            Refusal::NotAForm => {
                "Send the form as application/x-www-form-urlencoded with the fields ticket and passphrase.".into()
            }
            Refusal::BadForm => "The form could not be read.".into(),
            Refusal::BadBody => "The request body could not be read.".into(),
            Refusal::TooLarge => format!("The request body is larger than {MAX_BODY_BYTES} bytes."),
            Refusal::BodyTimeout => "The request body did not arrive in time.".into(),
            Refusal::BadCsr(e) => format!("{e}. Your ticket is still valid."),
            Refusal::StoreUnavailable(_) => {
                "Enrollment cannot be completed right now. Your link is still valid: try again in a moment.".into()
            }
            Refusal::Internal(_) => {
                "The certificate could not be issued. Your link is still valid: try again, and tell your administrator if it keeps failing.".into()
            }
        }
    }

    /// What to do, as HTML list items (static text only).
    fn steps(&self) -> Vec<String> {
        let s: &[&str] = match self {
            Refusal::UnknownTicket => &[
                "Already generated your certificate with this link? Then you are done: open the downloaded <code>.p12</code> file to import it, and sign in.",
                "Otherwise ask your administrator for a new enrollment link. Each link works once, and only for a limited time.",
            ],
            Refusal::StaleTicket => &[
                "Use the newest enrollment link you were sent, or ask your administrator for a new one.",
            ],
            Refusal::MissingTicket => &[
                "Copy the whole link from the message you received, or ask your administrator for a new one.",
            ],
            _ => &[],
        };
        s.iter().map(|s| s.to_string()).collect()
    }
}

fn refusal(refused: Refusal, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let mut resp = pages::render_message(
        headers,
        refused.status(),
        refused.token(),
        refused.title(),
        &refused.message(),
        &refused.steps(),
    );
    let h = resp.headers_mut();
    match refused {
        Refusal::TooManyAttempts => {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(FAILURE_WINDOW.as_secs()),
            );
        }
        Refusal::MissingBearer => {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"certgate enrollment\""),
            );
        }
        Refusal::StoreUnavailable(_) => {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        _ => {}
    }
    resp
}

fn method_not_allowed(allow: &'static str, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let mut r = pages::render_message(
        headers,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
        &format!("Use {allow}."),
        &[],
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn with_type(mut r: Response<Full<Bytes>>, content_type: &'static str) -> Response<Full<Bytes>> {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The headers every enrollment answer carries (the ticket is in the URL).
fn no_store(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// Reads the whole body, at most [`MAX_BODY_BYTES`] (else 413), within [`BODY_TIMEOUT`].
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Refusal> {
    let (parts, body) = req.into_parts();
    read_limited(&parts.headers, body, MAX_BODY_BYTES, Some(BODY_TIMEOUT))
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => Refusal::TooLarge,
            BodyError::TimedOut => Refusal::BodyTimeout,
            BodyError::Unreadable => Refusal::BadBody,
        })
}

/// Decodes `application/x-www-form-urlencoded` (`+` is a space).
fn form_fields(body: &[u8]) -> Result<Vec<(String, String)>, Refusal> {
    let text = std::str::from_utf8(body).map_err(|_| Refusal::BadForm)?;
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((form_decode(k)?, form_decode(v)?))
        })
        .collect()
}

fn form_decode(s: &str) -> Result<String, Refusal> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| Refusal::BadForm)
}

/// The first value of `name` in a query string.
fn query_param(query: &str, name: &str) -> Option<String> {
    form_fields(query.as_bytes())
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Tickets are base64url of 32 bytes (43 characters); anything else is refused without
/// asking the store. A little slack in length keeps this a sanity check, not a format.
fn plausible_ticket(t: &str) -> bool {
    (16..=128).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The DER of a CSR sent as PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`) or
/// as DER. PEM is read by `rustls-pki-types`.
fn csr_der(body: &[u8]) -> Result<Vec<u8>, CsrError> {
    use rustls_pki_types::CertificateSigningRequestDer;
    use rustls_pki_types::pem::PemObject as _;
    let trimmed = body.trim_ascii_start();
    if trimmed.first() == Some(&0x30) {
        return Ok(trimmed.to_vec());
    }
    let text = std::str::from_utf8(trimmed)
        .map_err(|_| CsrError::Malformed("neither PEM nor DER".into()))?;
    // Older tools label the same PKCS#10 block "NEW CERTIFICATE REQUEST".
    let text = text
        .replace(
            "-----BEGIN NEW CERTIFICATE REQUEST-----",
            "-----BEGIN CERTIFICATE REQUEST-----",
        )
        .replace(
            "-----END NEW CERTIFICATE REQUEST-----",
            "-----END CERTIFICATE REQUEST-----",
        );
    CertificateSigningRequestDer::from_pem_slice(text.as_bytes())
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| {
            CsrError::Malformed(format!(
                "no PEM \"CERTIFICATE REQUEST\" block could be read ({e})"
            ))
        })
}

/// The first common name of a certificate's subject (for the page), or a generic label.
fn common_name(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer as _;
    x509_parser::certificate::X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "certgate enrollment CA".into())
}

/// Counts failed ticket attempts per client address in fixed one-minute windows (from the
/// first failure). IPv6 addresses count per /64, the block one client usually holds.
/// Bounded: at most 100,000 addresses are tracked; the least recently seen go first.
struct FailureLimiter {
    counts: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
}

impl FailureLimiter {
    fn new() -> Self {
        FailureLimiter {
            counts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FAILURE_WINDOW)
                .build(),
        }
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut s = v6.segments();
                    s[4..].fill(0);
                    IpAddr::V6(s.into())
                }
            },
        }
    }

    fn blocked(&self, ip: IpAddr) -> bool {
        self.counts
            .get(&Self::key(ip))
            .is_some_and(|c| c.load(Ordering::Relaxed) >= MAX_FAILED_ATTEMPTS)
    }

    fn failed(&self, ip: IpAddr) {
        self.counts
            .get_with(Self::key(ip), || Arc::new(AtomicU32::new(0)))
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// The Client Certificate Initialization page.
fn enrollment_page(issuing: &Issuing, account: &str, ticket: &str) -> Response<Full<Bytes>> {
    let account = escape_html(account);
    let ticket = escape_html(ticket);
    let ca_name = escape_html(&issuing.ca_name);
    let base = escape_html(&issuing.public_url);
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Client Certificate Initialization</title><style>{css}{extra}</style></head>
<body><main>
<h1>Client Certificate Initialization</h1>
<p class="lead">Set up the client certificate for account <b id="account">{account}</b>.
Two-factor sign-in for this account needs it: from now on your browser presents it every time you sign in.</p>
<ol>
<li><b>Generate.</b> Choose a passphrase (at least {min} characters) and click <b>Generate Certificate</b>.
Your browser downloads <code>{account}.p12</code>: your certificate and its private key, protected by the passphrase.
This link works once.</li>
<li><b>Import.</b> Open the downloaded file and enter the passphrase (or import it in the browser's settings: Privacy and security &rarr; Security &rarr; Manage certificates &rarr; Import).</li>
<li><b>Sign in.</b> Go back to the application. When the browser asks for a certificate, pick the one for <b>{account}</b> issued by <i>{ca_name}</i>.</li>
<li><b>Lost it?</b> New computer, reinstalled browser, deleted file: ask your administrator to reset your certificate. You get a new link, and the old certificate stops working.</li>
</ol>
<form method="post" action="/.certgate/enroll/pkcs12" autocomplete="off">
<input type="hidden" name="ticket" value="{ticket}">
<label for="passphrase">Passphrase for the certificate file</label>
<input id="passphrase" name="passphrase" type="password" minlength="{min}" maxlength="{max}" required autocomplete="new-password">
<button id="generate" type="submit">Generate Certificate</button>
</form>
<details><summary>Keep the private key on your own machine instead (command line)</summary>
<p>Make a key and a certificate signing request, and send the request with the ticket from this page's address (the part after <code>ticket=</code>):</p>
<pre>openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout {account}.key -subj /CN={account} -out {account}.csr
curl --data-binary @{account}.csr -H "Authorization: Bearer $TICKET" \
  -o {account}.pem {base}/.certgate/enroll/csr</pre>
<p>Only the request's public key is used; the certificate's names are set by the gateway. Accepted keys: ECDSA P-256 or P-384, Ed25519, RSA of 2048 bits or more.</p>
</details>
</main></body></html>
"#,
        css = pages::CSS,
        extra = PAGE_CSS,
        min = MIN_PASSPHRASE_CHARS,
        max = MAX_PASSPHRASE_CHARS,
    );
    let mut resp = pages::build(StatusCode::OK, "text/html; charset=utf-8", body);
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    resp.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

const PAGE_CSS: &str = "form{margin:1.5rem 0;display:flex;flex-wrap:wrap;gap:.5rem;align-items:center}\
label{width:100%;font-weight:600}input[type=password]{flex:1;min-width:12rem;padding:.5rem;\
border:1px solid #99a;border-radius:4px;font-size:1rem}button{padding:.55rem 1.2rem;font-size:1rem;\
background:#1f5fbf;color:#fff;border:0;border-radius:4px;cursor:pointer}\
pre{background:#f4f5f7;padding:.75rem;overflow-x:auto;font-size:.8rem}summary{cursor:pointer}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = form_fields(b"ticket=abc_-1&passphrase=a+b%26c%3D%C3%A9&x").unwrap();
        assert_eq!(
            f,
            vec![
                ("ticket".into(), "abc_-1".into()),
                ("passphrase".into(), "a b&c=é".into()),
                ("x".into(), "".into()),
            ]
        );
        assert!(form_fields(b"a=%ff").is_err());
        assert!(form_fields(&[0xff]).is_err());
        assert_eq!(query_param("a=1&ticket=T", "ticket").as_deref(), Some("T"));
        assert_eq!(query_param("a=1", "ticket"), None);
    }

    #[test]
    fn csr_pem_and_der() {
        let key = ca::new_key().unwrap();
        let csr = rcgen::CertificateParams::new(vec![])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        let der = csr.der().to_vec();
        let pem = csr.pem().unwrap();
        assert_eq!(csr_der(pem.as_bytes()).unwrap(), der);
        assert_eq!(csr_der(&der).unwrap(), der);
        let new = pem.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
        assert_eq!(csr_der(new.as_bytes()).unwrap(), der);
        assert!(ca::csr_public_key(&der).is_ok());
        for bad in [
            &b""[..],
            b"hello",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n",
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA",
            b"\xff\xfe",
        ] {
            let r = csr_der(bad).and_then(|d| ca::csr_public_key(&d).map(|_| ()));
            assert!(r.is_err(), "{bad:?}");
        }
        // Truncated and bit-flipped DER never panics.
        for n in 0..der.len() {
            let _ = ca::csr_public_key(&der[..n]);
        }
        let mut flipped = der.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(ca::csr_public_key(&flipped).is_err());
    }

    #[test]
    fn limiter_counts_per_address_and_v6_block() {
        let l = FailureLimiter::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..MAX_FAILED_ATTEMPTS {
            assert!(!l.blocked(a));
            l.failed(a);
        }
        assert!(l.blocked(a));
        assert!(!l.blocked(b));
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        for _ in 0..MAX_FAILED_ATTEMPTS {
            l.failed(v6a);
        }
        assert!(l.blocked(v6b), "same /64");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(l.blocked(mapped));
    }

    #[test]
    fn ticket_sanity() {
        assert!(plausible_ticket(&ticket::generate()));
        assert!(!plausible_ticket(""));
        assert!(!plausible_ticket("short"));
        assert!(!plausible_ticket(&"a".repeat(200)));
        assert!(!plausible_ticket("aaaaaaaaaaaaaaaaaaaa/aaaaaaaaaaaaa"));
    }

    #[test]
    fn hex_serials() {
        assert_eq!(hex_bytes("0a1b"), Some(vec![0x0a, 0x1b]));
        assert_eq!(hex_bytes("abc"), None);
        assert_eq!(hex_bytes("zz"), None);
        assert_eq!(hex_bytes(""), None);
    }
}
