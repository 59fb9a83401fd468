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
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
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
    /// `None` when a configured CRL could not be read here: then nothing is remembered.
    accepted: Option<moka::sync::Cache<[u8; 32], Window>>,
    /// The earliest `nextUpdate` of the configured CRLs, when there are CRLs.
    crl_deadline: Option<u64>,
}

impl std::fmt::Debug for RememberingVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RememberingVerifier")
            .field("inner", &self.inner)
            .field(
                "remembered",
                &self.accepted.as_ref().map(|a| a.entry_count()),
            )
            .field("crl_deadline", &self.crl_deadline)
            .finish()
    }
}

impl RememberingVerifier {
    /// `crls` are the CRLs `inner` checks (their `nextUpdate` bounds every remembered
    /// acceptance). A CRL without `nextUpdate` adds no bound; one that cannot be parsed
    /// turns remembering off (the inner verifier still decides every handshake).
    pub fn new(
        inner: Arc<dyn ClientCertVerifier>,
        crls: &[CertificateRevocationListDer<'_>],
    ) -> Self {
        let mut crl_deadline = None;
        let mut remember = true;
        for crl in crls {
            match x509_parser::parse_x509_crl(crl.as_ref()) {
                Ok((_, parsed)) => {
                    if let Some(next) = parsed.next_update() {
                        let t = u64::try_from(next.timestamp()).unwrap_or(0);
                        crl_deadline = Some(crl_deadline.map_or(t, |d: u64| d.min(t)));
                    }
                }
                Err(_) => remember = false,
            }
        }
        let accepted = remember.then(|| {
            moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(REMEMBER_FOR)
                .build()
        });
        RememberingVerifier {
            inner,
            accepted,
            crl_deadline,
        }
    }

    /// How many accepted chains are remembered now (for tests and diagnostics).
    pub fn remembered(&self) -> u64 {
        let Some(accepted) = &self.accepted else {
            return 0;
        };
        accepted.run_pending_tasks();
        accepted.entry_count()
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
        let Some(accepted) = &self.accepted else {
            return self
                .inner
                .verify_client_cert(end_entity, intermediates, now);
        };
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
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
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
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use rustls::RootCertStore;
    use rustls::server::WebPkiClientVerifier;

    use super::*;
    use crate::pki::ca::{CaIssuer, CrlEntry};

    /// Counts the chain validations that reach webpki.
    #[derive(Debug)]
    struct Counting {
        inner: Arc<dyn ClientCertVerifier>,
        calls: AtomicUsize,
    }

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.inner.root_hint_subjects()
        }
        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner
                .verify_client_cert(end_entity, intermediates, now)
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
    }

    struct Ca {
        der: CertificateDer<'static>,
        /// Signs CRLs.
        issuer: CaIssuer,
        /// Signs client certificates.
        signer: rcgen::Issuer<'static, KeyPair>,
    }

    fn ca(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = p.self_signed(&key).unwrap();
        let issuer = CaIssuer::from_pem(&cert.pem(), &key.serialize_pem()).unwrap();
        let signer = rcgen::Issuer::from_ca_cert_pem(&cert.pem(), key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer,
            signer,
        }
    }

    /// A client certificate of `ca` valid from `from` to `until` (unix seconds).
    fn client(ca: &Ca, cn: &str, from: i64, until: i64) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(until).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x42, 0x01]));
        p.signed_by(&key, &ca.signer).unwrap().der().clone()
    }

    fn verifier(
        ca: &Ca,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> (RememberingVerifier, Arc<Counting>) {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).unwrap();
        let mut b = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        );
        if !crls.is_empty() {
            b = b
                .with_crls(crls.clone())
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status()
                .enforce_revocation_expiration();
        }
        let counting = Arc::new(Counting {
            inner: b.build().unwrap(),
            calls: AtomicUsize::new(0),
        });
        (RememberingVerifier::new(counting.clone(), &crls), counting)
    }

    fn at(t: i64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(t as u64))
    }

    const T0: i64 = 1_800_000_000;

    #[test]
    fn an_accepted_chain_is_validated_once_within_its_validity() {
        let ca = ca("test CA");
        let leaf = client(&ca, "alice", T0 - 100, T0 + 1000);
        let (v, inner) = verifier(&ca, vec![]);
        for t in [T0, T0 + 1, T0 + 999] {
            v.verify_client_cert(&leaf, &[], at(t)).unwrap();
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
        assert_eq!(v.remembered(), 1);

        // Another certificate is its own entry.
        let bob = client(&ca, "bob", T0 - 100, T0 + 1000);
        v.verify_client_cert(&bob, &[], at(T0)).unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        assert_eq!(v.remembered(), 2);
    }

    #[test]
    fn expiry_and_not_yet_valid_are_checked_again_and_refused() {
        let ca = ca("test CA");
        let leaf = client(&ca, "alice", T0 - 100, T0 + 1000);
        let (v, inner) = verifier(&ca, vec![]);
        v.verify_client_cert(&leaf, &[], at(T0)).unwrap();
        // Past notAfter: the remembered acceptance no longer holds; webpki refuses.
        assert!(v.verify_client_cert(&leaf, &[], at(T0 + 5000)).is_err());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        // Before notBefore: the same.
        assert!(v.verify_client_cert(&leaf, &[], at(T0 - 5000)).is_err());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        // Refusals are not remembered: each try reaches webpki again.
        assert!(v.verify_client_cert(&leaf, &[], at(T0 + 5000)).is_err());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_chain_from_an_untrusted_ca_is_refused_every_time() {
        let trusted = ca("trusted CA");
        let other = ca("other CA");
        let forged = client(&other, "alice", T0 - 100, T0 + 1000);
        let (v, inner) = verifier(&trusted, vec![]);
        for _ in 0..3 {
            assert!(v.verify_client_cert(&forged, &[], at(T0)).is_err());
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        assert_eq!(v.remembered(), 0);
    }

    #[test]
    fn a_crl_next_update_ends_the_remembered_acceptance() {
        let ca = ca("test CA");
        let leaf = client(&ca, "alice", T0 - 100, T0 + 100_000);
        let crl = ca
            .issuer
            .crl(
                1,
                &[CrlEntry {
                    serial: vec![0x77],
                    revoked_at: T0 - 50,
                    reason: None,
                }],
                T0 - 60,
                T0 + 500,
            )
            .unwrap();
        let (v, inner) = verifier(&ca, vec![CertificateRevocationListDer::from(crl)]);
        v.verify_client_cert(&leaf, &[], at(T0)).unwrap();
        v.verify_client_cert(&leaf, &[], at(T0 + 499)).unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
        // The CRL expired: webpki refuses (enforced expiration), and so must we.
        assert!(v.verify_client_cert(&leaf, &[], at(T0 + 501)).is_err());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_certificate_on_the_crl_is_never_accepted() {
        let ca = ca("test CA");
        let leaf = client(&ca, "alice", T0 - 100, T0 + 100_000);
        let crl = ca
            .issuer
            .crl(
                1,
                &[CrlEntry {
                    serial: vec![0x42, 0x01],
                    revoked_at: T0 - 50,
                    reason: None,
                }],
                T0 - 60,
                T0 + 500,
            )
            .unwrap();
        let (v, _) = verifier(&ca, vec![CertificateRevocationListDer::from(crl)]);
        for _ in 0..2 {
            assert!(v.verify_client_cert(&leaf, &[], at(T0)).is_err());
        }
        assert_eq!(v.remembered(), 0);
    }

    #[test]
    fn an_unreadable_crl_turns_remembering_off() {
        let ca = ca("test CA");
        let leaf = client(&ca, "alice", T0 - 100, T0 + 1000);
        let (_, inner) = verifier(&ca, vec![]);
        let garbage = CertificateRevocationListDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let v = RememberingVerifier::new(inner.clone(), &[garbage]);
        for _ in 0..3 {
            v.verify_client_cert(&leaf, &[], at(T0)).unwrap();
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        assert_eq!(v.remembered(), 0);
    }

    #[test]
    fn chain_keys_separate_the_leaf_from_its_intermediates() {
        let a = CertificateDer::from(vec![1u8, 2, 3]);
        let b = CertificateDer::from(vec![4u8]);
        let ab = CertificateDer::from(vec![1u8, 2, 3, 4]);
        assert_ne!(chain_key(&a, std::slice::from_ref(&b)), chain_key(&ab, &[]));
        assert_eq!(
            chain_key(&a, std::slice::from_ref(&b)),
            chain_key(&a, std::slice::from_ref(&b))
        );
    }
}
