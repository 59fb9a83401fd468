//! The crypto ceiling of certgate's own library (aws-lc, through aws-lc-rs) on one core:
//! the public-key operations of a full mTLS handshake, each timed alone. The benchmark
//! prints `openssl speed` beside it for the library nginx and HAProxy use.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey as PeerKey};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
};
use serde_json::{Value, json};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Operations per second of `op`, run for about `secs`.
fn rate(secs: f64, mut op: impl FnMut()) -> f64 {
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..16 {
            op();
        }
        n += 16;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

pub fn run(secs: f64) -> Result<Value, BoxError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| "key generation failed")?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
        .map_err(|_| "key load failed")?;
    let msg = [7u8; 64];
    let sig = key.sign(&rng, &msg).map_err(|_| "sign failed")?;
    let public = signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key());

    let sign = rate(secs, || {
        black_box(key.sign(&rng, black_box(&msg)).is_ok());
    });
    let verify = rate(secs, || {
        black_box(public.verify(black_box(&msg), sig.as_ref()).is_ok());
    });
    let ecdh = |alg: &'static agreement::Algorithm| -> Result<f64, BoxError> {
        let peer = EphemeralPrivateKey::generate(alg, &rng).map_err(|_| "keygen failed")?;
        let peer_pub = peer.compute_public_key().map_err(|_| "public key failed")?;
        let peer_pub = peer_pub.as_ref().to_vec();
        // One handshake's share: generate our ephemeral key, then agree.
        Ok(rate(secs, || {
            if let Ok(k) = EphemeralPrivateKey::generate(alg, &rng) {
                let _ = agreement::agree_ephemeral(k, PeerKey::new(alg, &peer_pub), (), |s| {
                    black_box(s.len());
                    Ok(())
                });
            }
        }))
    };
    let x25519 = ecdh(&agreement::X25519)?;
    let p256 = ecdh(&agreement::ECDH_P256)?;
    // Server side of a full mTLS handshake with an ECDSA P-256 client certificate: sign
    // CertificateVerify, verify the client certificate's signature and the client's
    // CertificateVerify, one ephemeral key exchange.
    let handshake_us = 1e6 / sign + 2.0 * 1e6 / verify + 1e6 / x25519;
    Ok(json!({
        "library": "aws-lc (aws-lc-rs)",
        "ecdsa_p256_sign_per_s": sign,
        "ecdsa_p256_verify_per_s": verify,
        "ecdhe_x25519_per_s": x25519,
        "ecdhe_p256_per_s": p256,
        "server_full_handshake_us": handshake_us,
    }))
}
