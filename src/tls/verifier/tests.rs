//! The remembering verifier against real chains and CRLs made at test time.

use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;

use rustls_pki_types::CertificateRevocationListDer;

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
    (
        RememberingVerifier::new(counting.clone(), earliest_next_update(&crls)),
        counting,
    )
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

/// What configuration loading records for these CRLs.
fn earliest_next_update(crls: &[CertificateRevocationListDer<'_>]) -> Option<i64> {
    crls.iter()
        .filter_map(|c| {
            let (_, parsed) = x509_parser::parse_x509_crl(c.as_ref()).unwrap();
            parsed.next_update().map(|t| t.timestamp())
        })
        .min()
}
