//! PKCS#12 bundles for browsers and OS certificate stores: one private key, its certificate
//! and the issuing CA, protected by a passphrase.
//!
//! The format is fixed to what current browsers, NSS (`pk12util`), OpenSSL 3 (without
//! `-legacy`) and OS stores import: PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC for both
//! the key and the certificate bags, an HMAC-SHA256 MAC with an 8-byte salt (a longer salt
//! is reported to break the macOS import), 100,000 iterations each.
//!
//! The crate behind it (`p12-keystore`) depends on RustCrypto pre-releases and has one
//! maintainer, so it stays behind this one function; the `openssl` crate would be the
//! replacement. Neighbours: `ca` issues the certificate, `enroll` serves the bundle.

use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
    PrivateKeyChain,
};
use sha2::{Digest, Sha256};

/// PBKDF2 iterations for the bag encryption and for the MAC.
pub const ITERATIONS: u32 = 100_000;

#[derive(Debug, thiserror::Error)]
#[error("PKCS#12 encoding failed: {0}")]
pub struct P12Error(String);

/// Builds a PKCS#12 file holding `key_pkcs8_der` and `chain` (leaf first), encrypted with
/// `passphrase`. `friendly_name` labels the key (stores show it as the entry's name).
///
/// Takes some tens of milliseconds of CPU (the key derivations): call it off the async
/// runtime's worker threads.
pub fn bundle(
    friendly_name: &str,
    key_pkcs8_der: &[u8],
    chain: &[&[u8]],
    passphrase: &str,
) -> Result<Vec<u8>, P12Error> {
    let err = |e: p12_keystore::error::Error| P12Error(e.to_string());
    let key = PrivateKey::from_der(key_pkcs8_der).map_err(err)?;
    let certs = chain
        .iter()
        .map(|der| Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let Some(leaf) = chain.first() else {
        return Err(P12Error("no certificate to bundle".into()));
    };
    // The local key id ties the key bag to the leaf's certificate bag.
    let local_key_id = Sha256::digest(leaf)[..20].to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        friendly_name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, certs)),
    );
    store
        .writer(passphrase)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(ITERATIONS)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .mac_iterations(ITERATIONS)
        .write()
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_the_passphrase_only() {
        let ca_key = crate::pki::ca::new_key().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["x.example".into()]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let key = crate::pki::ca::new_key().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["leaf.example".into()])
            .unwrap()
            .signed_by(&key, &rcgen::Issuer::new(p, &ca_key))
            .unwrap();
        let der = bundle(
            "alice (certgate)",
            &key.serialize_der(),
            &[leaf.der(), ca.der()],
            "correct horse",
        )
        .unwrap();
        let store =
            KeyStore::from_pkcs12(&der, "correct horse", Default::default()).expect("reads back");
        let (alias, chain) = store.private_key_chain().expect("a key chain");
        assert_eq!(alias, "alice (certgate)");
        assert_eq!(chain.key().as_der(), key.serialize_der().as_slice());
        assert_eq!(chain.certs()[0].as_der(), leaf.der().as_ref());
        assert!(KeyStore::from_pkcs12(&der, "wrong horse", Default::default()).is_err());
    }
}
