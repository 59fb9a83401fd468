//! The client-certificate verifier: webpki's chain and CRL validation, with a memory of the
//! chains it already accepted.
//!
//! A gateway sees the same client certificates again and again: every reconnection that does
//! not resume a session runs a full handshake, and checking the chain costs one signature
//! verification per certificate above the leaf (about 50 µs for ECDSA P-256, a fifth of a
//! full mTLS handshake's server CPU). The outcome of chain validation depends only on the
//! presented certificates' bytes, the trust material (roots, CRLs: fixed for one
//! [`RememberingVerifier`], which `tls` rebuilds on every reload) and the time. So an accepted
//! chain is remembered, keyed by the SHA-256 of its certificates, together with the window in
//! which that acceptance stays true: from the latest `notBefore` to the earliest `notAfter` of
//! the presented certificates, cut at the earliest `nextUpdate` of the configured CRLs (past
//! it, webpki refuses on an expired CRL, so the chain must be checked again).
//!
//! What is never skipped: the handshake signature (`CertificateVerify`), which proves that the
//! client holds the private key, is verified on every handshake by the inner verifier. Refused
//! chains are never remembered. The memory is bounded ([`CAPACITY`] chains, each forgotten
//! [`REMEMBER_FOR`] after it was accepted), and only chains our CAs signed can enter it.
//!
//! The per-request check against the state store (revocations, resets) is untouched: it runs
//! for every request whatever the handshake did (see `gate`).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};

/// The most chains remembered at once.
pub const CAPACITY: u64 = 65_536;
/// How long an accepted chain is remembered at most (its validity window may end sooner).
pub const REMEMBER_FOR: Duration = Duration::from_secs(3600);

/// Seconds since the epoch: `[from, until)` in which a remembered acceptance holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    from: u64,
    until: u64,
}

/// Wraps a chain-validating verifier (webpki's) and remembers the chains it accepted.
pub struct RememberingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    accepted: moka::sync::Cache<[u8; 32], Window>,
    /// The earliest `nextUpdate` of the configured CRLs, when there are CRLs.
    crl_deadline: Option<u64>,
    /// The subject (DER) of the enrollment CA: its certificates are accepted after their
    /// `notAfter` (when valid at it), so the user gets the "expired" page rather than a TLS
    /// alert; every protected request of such a connection is refused (`gate`).
    expired_page_issuer: Option<Vec<u8>>,
}

impl std::fmt::Debug for RememberingVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RememberingVerifier")
            .field("inner", &self.inner)
            .field("remembered", &self.accepted.entry_count())
            .field("crl_deadline", &self.crl_deadline)
            .finish()
    }
}

impl RememberingVerifier {
    /// `crl_deadline` is the earliest `nextUpdate` of the CRLs `inner` checks (unix
    /// seconds, decoded once when the configuration was loaded): it bounds every
    /// remembered acceptance.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, crl_deadline: Option<i64>) -> Self {
        let crl_deadline = crl_deadline.map(|t| u64::try_from(t).unwrap_or(0));
        let accepted = moka::sync::Cache::builder()
            .max_capacity(CAPACITY)
            .time_to_live(REMEMBER_FOR)
            .build();
        RememberingVerifier {
            inner,
            accepted,
            crl_deadline,
            expired_page_issuer: None,
        }
    }

    /// Accepts expired certificates of the CA with subject `issuer_der` (the enrollment
    /// CA) when they were valid at their own `notAfter`: chain, signatures and all.
    pub fn with_expired_page_issuer(mut self, issuer_der: Vec<u8>) -> Self {
        self.expired_page_issuer = Some(issuer_der);
        self
    }

    /// `end_entity`'s `notAfter` when it expired and comes from the expired-page issuer.
    fn expired_of_ours(&self, end_entity: &CertificateDer<'_>, e: &Error) -> Option<UnixTime> {
        use rustls::CertificateError;
        let issuer = self.expired_page_issuer.as_deref()?;
        if !matches!(
            e,
            Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ) {
            return None;
        }
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref()).ok()?;
        if cert.issuer().as_raw() != issuer {
            return None;
        }
        let not_after = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
        Some(UnixTime::since_unix_epoch(Duration::from_secs(not_after)))
    }

    /// How many accepted chains are remembered now (for tests and diagnostics).
    pub fn remembered(&self) -> u64 {
        self.accepted.run_pending_tasks();
        self.accepted.entry_count()
    }

    /// The window in which the chain's acceptance holds, from the certificates' validity
    /// and the CRLs' `nextUpdate`. `None` when a certificate cannot be parsed (then the
    /// chain is simply not remembered).
    fn window<'a>(&self, chain: impl Iterator<Item = &'a [u8]>) -> Option<Window> {
        let mut w = Window {
            from: 0,
            until: self.crl_deadline.unwrap_or(u64::MAX),
        };
        for der in chain {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            let v = cert.validity();
            w.from = w.from.max(u64::try_from(v.not_before.timestamp()).ok()?);
            w.until = w.until.min(u64::try_from(v.not_after.timestamp()).ok()?);
        }
        Some(w)
    }
}

/// SHA-256 over the chain, each certificate length-prefixed (no two chains share a key).
fn chain_key(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for der in std::iter::once(end_entity).chain(intermediates) {
        h.update((der.len() as u64).to_be_bytes());
        h.update(der.as_ref());
    }
    h.finalize().into()
}

impl ClientCertVerifier for RememberingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let accepted = &self.accepted;
        let key = chain_key(end_entity, intermediates);
        let t = now.as_secs();
        if let Some(w) = accepted.get(&key) {
            // webpki accepts a certificate at `notBefore` and at `notAfter` inclusive; the
            // window is kept half-open and so errs on the side of checking again.
            if w.from <= t && t < w.until {
                return Ok(ClientCertVerified::assertion());
            }
            accepted.invalidate(&key);
        }
        let verified = match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => v,
            Err(e) => {
                // An expired certificate of the enrollment CA: verified as of its last valid
                // second, accepted only to show the "expired" page (never remembered).
                let Some(at) = self.expired_of_ours(end_entity, &e) else {
                    return Err(e);
                };
                return match self.inner.verify_client_cert(end_entity, intermediates, at) {
                    Ok(v) => Ok(v),
                    Err(_) => Err(e),
                };
            }
        };
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.as_ref());
        if let Some(w) = self.window(chain)
            && w.from <= t
            && t < w.until
        {
            accepted.insert(key, w);
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests;
