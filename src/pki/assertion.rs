//! The signed identity assertion (`X-Client-Assertion`): a compact JWS (ES256) that tells
//! the application who the client is, verifiable with the public keys certgate publishes
//! as a JWK Set (`/.certgate/jwks.json`). Signing and the JWK encoding are jsonwebtoken's;
//! this module only decides the claims, the key id and which keys are published.
//!
//! Keys are P-256 PKCS#8 files. The current key signs; a previous key (kept by
//! `certgate rotate-assertion-key`) is still published, so tokens signed just before a
//! rotation verify until they expire.

use bytes::Bytes;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::core::identity::ClientIdentity;

/// Why a key cannot sign assertions.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("not an ECDSA P-256 private key in PKCS#8 (\"-----BEGIN PRIVATE KEY-----\")")]
    NotP256,
    #[error("cannot make a key: {0}")]
    Generate(String),
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// The claims of one assertion.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    /// The account; absent for a certificate without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    iat: i64,
    exp: i64,
    /// Lower-case hex of the certificate's serial.
    serial: &'a str,
    /// Lower-case hex SHA-256 of the certificate's DER.
    fingerprint: &'a str,
    /// The account's generation the certificate was issued for (enrollment CA only).
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    /// RFC 8705 certificate confirmation: base64url SHA-256 of the DER.
    cnf: Confirmation,
}

#[derive(Serialize)]
struct Confirmation {
    #[serde(rename = "x5t#S256")]
    x5t_s256: String,
}

/// One usable key: the signing key and its public JWK.
struct Key {
    encoding: EncodingKey,
    jwk: Jwk,
}

impl Key {
    fn from_pkcs8(der: &[u8]) -> Result<Key, AssertionError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| AssertionError::NotP256)?;
        install_provider();
        let encoding = EncodingKey::from_ec_der(der);
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256)
            .map_err(|_| AssertionError::NotP256)?;
        jwk.common.key_id = Some(jwk.thumbprint(ThumbprintHash::SHA256));
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Key { encoding, jwk })
    }

    fn kid(&self) -> &str {
        self.jwk.common.key_id.as_deref().unwrap_or_default()
    }
}

/// jsonwebtoken picks its crypto backend from features; name ours so that a second
/// backend enabled elsewhere in the build can never leave it without one.
fn install_provider() {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}

/// Signs assertions with the current key; publishes the current and previous keys.
pub struct AssertionSigner {
    issuer: String,
    audience: String,
    ttl_secs: i64,
    current: Key,
    header: Header,
    jwks: Bytes,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("kid", &self.current.kid())
            .finish_non_exhaustive()
    }
}

impl AssertionSigner {
    /// `current` and `previous` are PKCS#8 DER of P-256 keys.
    pub fn new(
        issuer: &str,
        audience: &str,
        ttl: std::time::Duration,
        current: &[u8],
        previous: Option<&[u8]>,
    ) -> Result<AssertionSigner, AssertionError> {
        let current = Key::from_pkcs8(current)?;
        let mut keys = vec![current.jwk.clone()];
        if let Some(p) = previous {
            let p = Key::from_pkcs8(p)?;
            if p.kid() != current.kid() {
                keys.push(p.jwk);
            }
        }
        let jwks = serde_json::to_vec_pretty(&JwkSet { keys })
            .map_err(|e| AssertionError::Sign(e.to_string()))?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(current.kid().to_string());
        Ok(AssertionSigner {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            ttl_secs: ttl.as_secs().max(1) as i64,
            current,
            header,
            jwks: Bytes::from(jwks),
        })
    }

    /// The key id (RFC 7638 thumbprint) of the signing key.
    pub fn kid(&self) -> &str {
        self.current.kid()
    }

    /// The JWK Set (JSON) of the published keys.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// How long an assertion is valid, in seconds.
    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// An assertion for `id`, issued at `now` (Unix seconds); it expires `ttl` later, or
    /// when the certificate does, whichever is first.
    pub fn sign(&self, id: &ClientIdentity, now: i64) -> Result<String, AssertionError> {
        use base64::Engine as _;
        let fingerprint_bytes = crate::core::text::unhex(&id.fingerprint).unwrap_or_default();
        let claims = Claims {
            iss: &self.issuer,
            aud: &self.audience,
            sub: id.account.as_deref(),
            iat: now,
            exp: (now + self.ttl_secs).min(id.not_after.max(now + 1)),
            serial: &id.serial,
            fingerprint: &id.fingerprint,
            generation: id.generation,
            cnf: Confirmation {
                x5t_s256: base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(fingerprint_bytes),
            },
        };
        jsonwebtoken::encode(&self.header, &claims, &self.current.encoding)
            .map_err(|e| AssertionError::Sign(e.to_string()))
    }
}

/// A new P-256 signing key as PKCS#8 PEM.
pub fn generate_key_pem() -> Result<String, AssertionError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AssertionError::Generate(e.to_string()))?;
    Ok(key.serialize_pem())
}

/// The PKCS#8 DER inside a PEM private key file.
pub fn key_der_from_pem(pem: &[u8]) -> Result<Vec<u8>, AssertionError> {
    use rustls_pki_types::pem::PemObject as _;
    match rustls_pki_types::PrivateKeyDer::from_pem_slice(pem) {
        Ok(rustls_pki_types::PrivateKeyDer::Pkcs8(k)) => Ok(k.secret_pkcs8_der().to_vec()),
        _ => Err(AssertionError::NotP256),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn der() -> Vec<u8> {
        key_der_from_pem(generate_key_pem().unwrap().as_bytes()).unwrap()
    }

    fn identity() -> ClientIdentity {
        let hv = http::HeaderValue::from_static("x");
        ClientIdentity {
            account: Some("alice".into()),
            serial: "0a1b".into(),
            fingerprint: "ab".repeat(32),
            subject: "CN=alice".into(),
            issuer_raw: vec![],
            san_uris: vec![],
            san_emails: vec![],
            san_dns: vec![],
            not_before: 0,
            not_after: i64::MAX / 2,
            generation: Some(3),
            issued_by_enrollment_ca: true,
            headers: crate::core::identity::IdentityHeaders {
                account: Some(hv.clone()),
                serial: hv.clone(),
                fingerprint: hv.clone(),
                subject: hv.clone(),
                not_after: hv.clone(),
                client_cert: hv.clone(),
                xfcc: hv,
            },
        }
    }

    fn part(token: &str, n: usize) -> serde_json::Value {
        let p = token.split('.').nth(n).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn an_assertion_names_the_certificate_and_verifies_with_the_published_key() {
        let s = AssertionSigner::new(
            "certgate",
            "app",
            std::time::Duration::from_secs(60),
            &der(),
            None,
        )
        .unwrap();
        let id = identity();
        let now = crate::core::clock::now();
        let token = s.sign(&id, now).unwrap();
        let header = part(&token, 0);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], s.kid());
        let claims = part(&token, 1);
        assert_eq!(claims["iss"], "certgate");
        assert_eq!(claims["aud"], "app");
        assert_eq!(claims["sub"], id.account.clone().unwrap());
        assert_eq!(claims["serial"], id.serial);
        assert_eq!(claims["fingerprint"], id.fingerprint);
        assert_eq!(claims["exp"].as_i64().unwrap(), now + 60);
        assert_eq!(claims["generation"], 3);
        assert_eq!(
            claims["cnf"]["x5t#S256"],
            "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s"
        );

        let set: JwkSet = serde_json::from_slice(&s.jwks()).unwrap();
        let jwk = set.find(s.kid()).expect("the signing key is published");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
        v.set_audience(&["app"]);
        v.set_issuer(&["certgate"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).unwrap();
        assert_eq!(data.claims["serial"], id.serial);
        // Another audience does not verify.
        v.set_audience(&["other"]);
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).is_err());
    }

    #[test]
    fn a_rotation_publishes_both_keys_and_signs_with_the_new_one() {
        let (old, new) = (der(), der());
        let before =
            AssertionSigner::new("i", "a", std::time::Duration::from_secs(60), &old, None).unwrap();
        let after = AssertionSigner::new(
            "i",
            "a",
            std::time::Duration::from_secs(60),
            &new,
            Some(&old),
        )
        .unwrap();
        assert_ne!(before.kid(), after.kid());
        let set: JwkSet = serde_json::from_slice(&after.jwks()).unwrap();
        assert_eq!(set.keys.len(), 2);
        assert!(set.find(before.kid()).is_some());
        assert!(set.find(after.kid()).is_some());
    }

    #[test]
    fn only_p256_pkcs8_keys_are_taken() {
        assert!(key_der_from_pem(b"not a key").is_err());
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let der = key_der_from_pem(rsa.serialize_pem().as_bytes()).unwrap();
        assert!(matches!(
            AssertionSigner::new("i", "a", std::time::Duration::from_secs(5), &der, None),
            Err(AssertionError::NotP256)
        ));
    }
}
