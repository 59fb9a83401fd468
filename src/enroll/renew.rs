//! Renewal by the certificate's holder, without an admin: `GET /.certgate/certificate`
//! ("Managing your client certificate") and `POST /.certgate/renew` (a CSR, authenticated
//! by the connection's current certificate over mTLS; no ticket).
//!
//! Only a certificate of the enrollment CA that the gate allows right now (not revoked,
//! not reset, not expired), within `enrollment.renew_before` of its expiry, is renewed. The
//! new certificate has the same account and generation and names the old one's serial
//! (`urn:certgate:renews:<serial>`). The old one is revoked (reason `superseded`) when the
//! new one is first used for an allowed request ([`Enrollment::retire_renewed`], called by
//! the proxy), or simply expires if the new one is never used. Not at issue time: a
//! download that never made it into the browser's store would lock the user out.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use super::form::{csr_der, read_body};
use super::page::{CertificateFacts, Renewal, certificate_page};
use super::refusal::{Refusal, with_type};
use super::{Enrollment, Issuing, assets, audit, same_origin};
use crate::core::decision::Decision;
use crate::core::identity::ClientIdentity;
use crate::core::records::{CertRecord, Revocation, RevocationReason};
use crate::pki::ca;

/// The most working (unexpired, unrevoked) certificates of one account generation for
/// which renewal still issues another: each renewal adds one until the new one is used, so
/// this bounds what a due certificate can mint.
pub const MAX_LIVE_CERTIFICATES: usize = 10;

/// The connection's certificate and what the gate decides for it now.
#[derive(Clone, Copy)]
pub struct Presented<'a> {
    pub identity: &'a ClientIdentity,
    pub decision: Decision,
}

impl Issuing {
    /// Whether `id` can be renewed at `now`.
    fn renewal(&self, id: &ClientIdentity, now: i64) -> Renewal {
        if !id.issued_by_enrollment_ca || id.account.is_none() || id.generation.is_none() {
            return Renewal::NotOurs;
        }
        if self.renew_before.is_zero() {
            return Renewal::Off;
        }
        let opens = id.not_after - self.renew_before.as_secs() as i64;
        if now >= opens {
            Renewal::Due
        } else {
            Renewal::OpensAt(opens)
        }
    }
}

/// The certificate, when the gate allows it.
fn allowed(who: Option<Presented<'_>>) -> Result<&ClientIdentity, Refusal> {
    match who {
        None => Err(Refusal::Gate(Decision::NoCert)),
        Some(p) if p.decision == Decision::Allowed => Ok(p.identity),
        Some(p) => Err(Refusal::Gate(p.decision)),
    }
}

impl Enrollment {
    /// `GET /certificate`.
    pub(super) async fn certificate(
        &self,
        issuing: &Issuing,
        who: Option<Presented<'_>>,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        let id = allowed(who)?;
        let now = crate::core::clock::now();
        let store = self.cache.store();
        let account = id.account.as_deref().unwrap_or("-");
        let mut issued_at = None;
        let mut issued_from = None;
        let mut others = Vec::new();
        if let (Some(a), Some(generation)) = (id.account.as_deref(), id.generation) {
            let certs = store
                .certificates_of(a)
                .await
                .map_err(Refusal::StoreUnavailable)?;
            if let Some(c) = certs.into_iter().find(|c| c.serial == id.serial) {
                issued_at = Some(c.issued_at);
                issued_from = c.issued_from;
            }
            others = self
                .working_certificates(a, generation, now)
                .await?
                .into_iter()
                .filter(|c| c.serial != id.serial)
                .map(|c| (c.serial, c.not_after))
                .collect();
        }
        let ca_name = if id.issued_by_enrollment_ca {
            issuing.ca_name.clone()
        } else {
            use x509_parser::prelude::FromDer as _;
            x509_parser::x509::X509Name::from_der(&id.issuer_raw)
                .map(|(_, n)| n.to_string())
                .unwrap_or_else(|_| "another certificate authority".into())
        };
        Ok(certificate_page(&CertificateFacts {
            account,
            serial: &id.serial,
            ca_name: &ca_name,
            not_before: id.not_before,
            not_after: id.not_after,
            issued_at,
            issued_from: issued_from.as_deref(),
            others: &others,
            renewal: issuing.renewal(id, now),
            public_url: &issuing.public_url,
            script: &format!("/.certgate{}", assets::SCRIPT_PATH),
            integrity: assets::integrity(),
            now,
        }))
    }

    /// `POST /renew`: the CSR's key certified for the connection's account and generation.
    pub(super) async fn renew(
        &self,
        issuing: &Issuing,
        peer: SocketAddr,
        who: Option<Presented<'_>>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        same_origin(req.headers(), req.uri(), &issuing.public_url)?;
        let id = allowed(who)?;
        let now = crate::core::clock::now();
        match issuing.renewal(id, now) {
            Renewal::Due => {}
            Renewal::OpensAt(t) => return Err(Refusal::NotDue(t)),
            Renewal::Off => return Err(Refusal::RenewalOff),
            Renewal::NotOurs => return Err(Refusal::NotRenewable),
        }
        let (Some(account), Some(generation)) = (id.account.as_deref(), id.generation) else {
            return Err(Refusal::NotRenewable);
        };
        let body = read_body(req).await?;
        let der = csr_der(&body).map_err(Refusal::BadCsr)?;
        let spki = ca::csr_public_key(&der).map_err(Refusal::BadCsr)?;
        let live = self
            .working_certificates(account, generation, now)
            .await?
            .len();
        if live >= MAX_LIVE_CERTIFICATES {
            return Err(Refusal::TooManyCertificates(live));
        }
        let issued = issuing
            .ca
            .issue_renewal(&spki, account, generation, issuing.validity, &id.serial)
            .map_err(|e| Refusal::Internal(e.to_string()))?;
        let record = CertRecord {
            serial: issued.serial.clone(),
            account: account.to_string(),
            generation,
            fingerprint: issued.fingerprint.clone(),
            not_after: issued.not_after,
            issued_at: issued.issued_at,
            issued_from: Some(peer.ip().to_string()),
        };
        self.cache
            .store()
            .record_certificate(record)
            .await
            .map_err(Refusal::StoreUnavailable)?;
        audit(peer, "renew", account, generation, &issued);
        tracing::info!(
            target: "certgate::audit",
            action = "renew",
            account,
            old_serial = %id.serial,
            serial = %issued.serial,
            "certificate renewed; the old one is revoked at the new one's first use"
        );
        let chain = format!("{}{}", issued.cert_pem, issuing.ca.cert_pem);
        Ok(with_type(
            Response::new(Full::new(Bytes::from(chain))),
            "application/pem-certificate-chain",
        ))
    }

    /// The certificates of `account`'s `generation` that are unexpired and unrevoked.
    async fn working_certificates(
        &self,
        account: &str,
        generation: u64,
        now: i64,
    ) -> Result<Vec<CertRecord>, Refusal> {
        let store = self.cache.store();
        let certs = store
            .certificates_of(account)
            .await
            .map_err(Refusal::StoreUnavailable)?;
        let mut working = Vec::new();
        for c in certs {
            if c.generation != generation || c.not_after <= now {
                continue;
            }
            let revoked = store
                .revocation(&c.serial)
                .await
                .map_err(Refusal::StoreUnavailable)?;
            if revoked.is_none() {
                working.push(c);
            }
        }
        Ok(working)
    }

    /// Called by the proxy at the first allowed request of a connection: when its
    /// certificate renews another of the same account, that one is revoked (reason
    /// `superseded`), in the background. Does nothing for other certificates.
    pub fn retire_renewed(&self, id: &ClientIdentity) {
        let (Some(old), Some(account)) = (id.renews(), id.account.clone()) else {
            return;
        };
        let old = old.to_string();
        let new = id.serial.clone();
        let cache = self.cache.clone();
        tokio::spawn(async move {
            let store = cache.store();
            let record = match store.certificate(&old).await {
                Ok(Some(r)) if r.account == account => r,
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, serial = %old, "cannot retire the renewed certificate now; it is retried at the next connection");
                    return;
                }
            };
            match store.revocation(&old).await {
                Ok(None) => {}
                Ok(Some(_)) => return,
                Err(e) => {
                    tracing::warn!(error = %e, serial = %old, "cannot retire the renewed certificate now; it is retried at the next connection");
                    return;
                }
            }
            let revocation = Revocation {
                serial: old.clone(),
                reason: RevocationReason::Superseded,
                revoked_at: crate::core::clock::now(),
                not_after: Some(record.not_after),
            };
            match cache.revoke(revocation).await {
                Ok(_) => tracing::info!(
                    target: "certgate::audit",
                    action = "revoke",
                    reason = "superseded",
                    %account,
                    serial = %old,
                    by = %new,
                    "renewed certificate retired at its successor's first use"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, serial = %old, "cannot retire the renewed certificate now; it is retried at the next connection")
                }
            }
        });
    }
}
