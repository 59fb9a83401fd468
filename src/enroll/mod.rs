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

mod assets;
mod crl;
mod form;
mod limiter;
mod limits;
mod page;
mod refusal;
mod renew;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::config::Config;
use crate::core::clock::now;
use crate::core::decision::Decision;
use crate::core::outcome::{NOT_FOUND, Outcome as _};
use crate::core::ticket;
use crate::http::auth::bearer_token;
use crate::http::pages;
use crate::metrics::{Metrics, Outcome, OutcomeLabels};
use crate::pki::ca::{self, CaError, CaIssuer, CrlEntry};
use crate::state::cache::StateCache;
use crate::state::{CertRecord, Revocation, TicketRecord};
use crl::*;
use form::*;
use limiter::*;
pub use limits::*;
use page::*;
use refusal::*;
pub use renew::Presented;

/// Lifetime of a CRL (its `nextUpdate` − `thisUpdate`).
pub const CRL_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);
/// An unchanged CRL is signed anew when it is this old, well before its `nextUpdate`.
const CRL_REFRESH: Duration = Duration::from_secs(12 * 60 * 60);
/// The revocation list is read at most this often for `GET /crl`, however many ask.
const CRL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

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

/// What a ticket lookup is for.
#[derive(Clone, Copy)]
enum Use {
    /// Showing the page: the ticket stays valid.
    Peek,
    /// Issuing: the ticket is spent.
    Consume,
}

/// What enrollment needs when it is on.
struct Issuing {
    ca: Arc<CaIssuer>,
    /// The CA's common name, shown on the page so users recognise the certificate.
    ca_name: String,
    validity: Duration,
    public_url: String,
    /// The server certificate comes from the development server CA of `certgate init`, so
    /// the page's `curl` command needs `--cacert` with it.
    dev_server_ca: bool,
    /// `enrollment.server_side_keys`.
    server_side_keys: bool,
    /// `enrollment.renew_before`.
    renew_before: Duration,
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
                dev_server_ca: cfg
                    .tls
                    .cert
                    .certs
                    .first()
                    .and_then(|c| form::issuer_name(c))
                    .is_some_and(|n| n == crate::pki::ca::DEV_SERVER_CA_NAME),
                server_side_keys: e.server_side_keys,
                renew_before: e.renew_before,
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
    ///
    /// `who` is the connection's certificate and the gate's decision for it, for the paths
    /// that need it ([`Enrollment::needs_certificate`]).
    pub async fn handle(
        &self,
        path: &str,
        peer: SocketAddr,
        who: Option<Presented<'_>>,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let Some(issuing) = &self.issuer else {
            return pages::render(&NOT_FOUND, req.headers());
        };
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        let post = *req.method() == Method::POST;
        match path {
            "/ca.pem" if get => {
                let pem = self.ca_pem.clone().unwrap_or_default();
                with_type(Response::new(Full::new(pem)), "application/x-pem-file")
            }
            "/crl" if get => self.crl(issuing).await,
            assets::SCRIPT_PATH if get => no_store(assets::script()),
            "/enroll" if get => self.page(issuing, peer, &req).await,
            "/enroll/pkcs12" if post => {
                let headers = req.headers().clone();
                let result = self.pkcs12(issuing, peer, req).await;
                self.finish(peer, "pkcs12", result, &headers)
            }
            "/enroll/csr" if post => {
                let headers = req.headers().clone();
                let result = self.csr(issuing, peer, req).await;
                self.finish(peer, "csr", result, &headers)
            }
            "/certificate" if get => {
                let result = self.certificate(issuing, who).await;
                match result {
                    Ok(r) => no_store(r),
                    Err(refused) => refusal(refused, req.headers()),
                }
            }
            "/renew" if post => {
                let headers = req.headers().clone();
                let result = self.renew(issuing, peer, who, req).await;
                self.finish(peer, "renew", result, &headers)
            }
            "/renew" => method_not_allowed("POST", req.headers()),
            "/ca.pem" | "/crl" | "/enroll" | "/certificate" | assets::SCRIPT_PATH => {
                method_not_allowed("GET, HEAD", req.headers())
            }
            "/enroll/pkcs12" | "/enroll/csr" => method_not_allowed("POST", req.headers()),
            _ => pages::render(&NOT_FOUND, req.headers()),
        }
    }

    /// Whether `/.certgate{path}` needs the connection's certificate and its decision.
    pub fn needs_certificate(path: &str) -> bool {
        matches!(path, "/certificate" | "/renew")
    }

    /// `GET /enroll?ticket=T`: the page, or why the link does not work.
    async fn page(
        &self,
        issuing: &Issuing,
        peer: SocketAddr,
        req: &Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let headers = req.headers();
        let Some(presented) = query_param(req.uri().query().unwrap_or(""), "ticket") else {
            return refusal(Refusal::MissingTicket, headers);
        };
        let record = match self.ticket(issuing, peer, &presented, Use::Peek).await {
            Ok(r) => r,
            Err(refused) => {
                tracing::info!(target: "certgate::enroll", %peer, reason = refused.token(), "enrollment page refused");
                return refusal(refused, headers);
            }
        };
        enrollment_page(&page::PageFacts {
            ca_name: &issuing.ca_name,
            public_url: &issuing.public_url,
            account: &record.account,
            ticket: &presented,
            dev_server_ca: issuing.dev_server_ca,
            server_side_keys: issuing.server_side_keys,
            script: &format!("/.certgate{}", assets::SCRIPT_PATH),
            integrity: assets::integrity(),
        })
    }

    /// `POST /enroll/pkcs12`: key pair made here, certificate issued, PKCS#12 returned.
    async fn pkcs12(
        &self,
        issuing: &Issuing,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        same_origin(req.headers(), req.uri(), &issuing.public_url)?;
        if !issuing.server_side_keys {
            return Err(Refusal::ServerKeysOff);
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

        let record = self.ticket(issuing, peer, &presented, Use::Consume).await?;
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
        self.record(peer, &record, &issued).await?;
        audit(peer, "pkcs12", &record.account, record.generation, &issued);
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
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        same_origin(req.headers(), req.uri(), &issuing.public_url)?;
        let presented = bearer_token(req.headers())
            .map(str::to_string)
            .ok_or(Refusal::MissingBearer)?;
        let body = read_body(req).await?;
        let der = csr_der(&body).map_err(Refusal::BadCsr)?;
        let spki = ca::csr_public_key(&der).map_err(Refusal::BadCsr)?;

        let record = self.ticket(issuing, peer, &presented, Use::Consume).await?;
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
        self.record(peer, &record, &issued).await?;
        audit(peer, "csr", &record.account, record.generation, &issued);
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

    /// Looks `presented` up (for the page) or consumes it (for issuing), under the
    /// failure limits of [`limiter`]: a valid ticket is always honoured; failures count
    /// per address and per ticket, and past the limit they are answered with 429.
    async fn ticket(
        &self,
        issuing: &Issuing,
        peer: SocketAddr,
        presented: &str,
        how: Use,
    ) -> Result<TicketRecord, Refusal> {
        let hash = plausible_ticket(presented).then(|| ticket::hash(presented));
        if hash
            .as_deref()
            .is_some_and(|h| issuing.failures.ticket_over(h))
        {
            // Failed too often already: not worth a store round trip.
            return Err(Refusal::TooManyAttempts);
        }
        let limited = issuing.failures.address_over(peer.ip());
        let looked = match how {
            Use::Peek => self.peek_ticket(presented).await,
            Use::Consume => self.use_ticket(presented).await,
        };
        match looked {
            Err(refused) if refused.is_ticket_failure() => {
                issuing.failures.failed(peer.ip(), hash.as_deref());
                Err(if limited {
                    Refusal::TooManyAttempts
                } else {
                    refused
                })
            }
            other => other,
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

    async fn record(
        &self,
        peer: SocketAddr,
        record: &TicketRecord,
        issued: &ca::Issued,
    ) -> Result<(), Refusal> {
        let cert = CertRecord {
            serial: issued.serial.clone(),
            account: record.account.clone(),
            generation: record.generation,
            fingerprint: issued.fingerprint.clone(),
            not_after: issued.not_after,
            issued_at: issued.issued_at,
            issued_from: Some(peer.ip().to_string()),
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
                    _ => pages::json(&Decision::StoreUnavailable),
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
                    _ => pages::json(&Decision::StoreUnavailable),
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

/// One audit line per issued certificate: never the ticket, the passphrase or a key.
fn audit(
    peer: SocketAddr,
    method: &'static str,
    account: &str,
    generation: u64,
    issued: &ca::Issued,
) {
    tracing::info!(
        target: "certgate::audit",
        action = "enroll",
        method,
        account,
        generation,
        serial = %issued.serial,
        not_after = %crate::core::text::rfc3339(issued.not_after),
        %peer,
        "certificate issued"
    );
}

/// Reads a CSR as `POST /enroll/csr` does (PEM or DER, size-checked) into DER.
pub fn read_csr(body: &[u8]) -> Result<Vec<u8>, crate::pki::ca::CsrError> {
    form::csr_der(body)
}

/// A browser's POST must come from certgate's own page (the ticket is the only secret, so
/// another site must not be able to submit a form with one it learned). Browsers that send
/// `Sec-Fetch-Site` (every current one) are judged by it: `same-origin` or `none` pass.
/// Without it, an `Origin` that is neither this request's own (`https://` + its host) nor
/// `enrollment.public_url`'s is refused; `Origin: null` passes then, since the page's
/// `Referrer-Policy: no-referrer` makes browsers send it for the page's own form. Clients
/// that send neither header (curl, scripts posting a CSR) are not browsers and pass.
fn same_origin(
    headers: &http::HeaderMap,
    uri: &http::Uri,
    public_url: &str,
) -> Result<(), Refusal> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    if let Some(site) = text("sec-fetch-site") {
        return if site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none") {
            Ok(())
        } else {
            Err(Refusal::CrossSite)
        };
    }
    let Some(origin) = text("origin").filter(|o| *o != "null") else {
        return Ok(());
    };
    let host = uri.authority().map(|a| a.as_str()).or_else(|| text("host"));
    let own = host.map(|h| format!("https://{h}"));
    let public = origin_of(public_url);
    let matches = |o: &str| origin.eq_ignore_ascii_case(o);
    if own.as_deref().is_some_and(matches) || public.is_some_and(matches) {
        Ok(())
    } else {
        Err(Refusal::CrossSite)
    }
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<&str> {
    let rest_at = url.find("://")? + 3;
    let end = url[rest_at..].find('/').map_or(url.len(), |i| rest_at + i);
    Some(&url[..end])
}

#[cfg(test)]
mod tests;
