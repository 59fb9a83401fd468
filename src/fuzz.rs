//! Entry points for fuzzing every parser of bytes that come from the network or from
//! files (feature `fuzzing`): the cargo-fuzz targets in `fuzz/` call these, and
//! `tests/fuzz_corpus.rs` replays every committed corpus file through them on stable Rust,
//! so CI runs each target over its corpus. Each function must return for any input; a
//! panic is a finding. Where a law holds (identity headers never survive sanitising, a
//! refused path is refused on every route) it is asserted here too.

use std::path::Path;
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Underscores;
use crate::core::gate;
use crate::core::identity::AccountSource;
use crate::tls::identity::{IdentityOptions, parse};

/// A CSR as the enrollment endpoint reads it (PEM or DER), then its public key.
pub fn csr(data: &[u8]) {
    if let Ok(der) = crate::enroll::read_csr(data) {
        let _ = crate::pki::ca::csr_public_key(&der);
    }
    let _ = crate::pki::ca::csr_public_key(data);
}

/// A PKCS#12 bundle built from fuzzed parts: the first byte splits the rest into a
/// friendly name, a passphrase and a certificate DER, bundled with a fixed valid key.
pub fn pkcs12(data: &[u8]) {
    static KEY: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    let (key, cert) = KEY.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["fuzz".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (key.serialize_der(), cert.der().to_vec())
    });
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = (split as usize).min(rest.len());
    let (name, rest) = rest.split_at(at);
    let at = rest.len() / 2;
    let (pass, der) = rest.split_at(at);
    let name = String::from_utf8_lossy(name);
    let pass = String::from_utf8_lossy(pass);
    let _ = crate::pki::p12::bundle(&name, key, &[cert], &pass);
    let _ = crate::pki::p12::bundle(&name, key, &[der], &pass);
    let _ = crate::pki::p12::bundle(&name, der, &[cert], &pass);
}

/// The YAML configuration, file → validated config (files it names are looked up in a
/// folder that does not exist, so only the text is exercised).
pub fn config_yaml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::file::from_yaml(text, Path::new("/nonexistent/certgate.yaml"));
    }
}

/// A PROXY protocol v1 or v2 header at the start of a connection.
pub fn proxy_protocol(data: &[u8]) {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    });
    let mut input = data;
    let _ = rt.block_on(crate::server::proxy_protocol::read_header(&mut input));
}

/// A request path: normalisation and classification. Laws: a path refused on one route
/// set is refused on every route set (refusals do not depend on the routes), and a path
/// classifies as its normalised form does (the forwarded path is read the way it was
/// classified).
pub fn path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let public = ["/public".to_string(), "/static".to_string()];
    let everything = ["/".to_string()];
    match gate::classify(path, &public) {
        Err(e) => {
            assert_eq!(gate::classify(path, &everything), Err(e), "{path:?}");
            assert_eq!(gate::classify(path, &[]), Err(e), "{path:?}");
        }
        Ok(route) => {
            // Normalising again changes nothing (a decoded `%` would be read as an escape,
            // so only forms without one).
            let norm = gate::normalize_path(path).expect("classified paths normalise");
            if !norm.contains('%') {
                assert_eq!(
                    gate::classify(&norm, &public),
                    Ok(route),
                    "{path:?} vs {norm:?}"
                );
            }
        }
    }
}

/// A client certificate's leaf DER → identity and its headers.
pub fn identity(data: &[u8]) {
    let opts = IdentityOptions {
        account_from: vec![
            AccountSource::SanUri,
            AccountSource::SanEmail,
            AccountSource::SubjectCn,
        ],
        uri_prefix: "urn:certgate:account:".into(),
        enrollment_ca: None,
    };
    let _ = parse(data, &opts);
}

/// Request headers from fuzzed `name: value` lines: the one-host rule, and sanitising under
/// every `headers.underscores` policy. Law: no identity header survives, in any spelling.
pub fn headers(data: &[u8]) {
    let mut map = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    // The one-host rule over the same headers (never panics; a refusal is an answer).
    let hosts = map
        .get_all(http::header::HOST)
        .iter()
        .map(|h| h.to_str().ok());
    let _ = gate::request_host(true, None, hosts);
    for policy in [Underscores::Drop, Underscores::Reject, Underscores::Allow] {
        let mut h = map.clone();
        if crate::proxy::strip_identity_headers(&mut h, policy).is_err() {
            assert_eq!(policy, Underscores::Reject);
            continue;
        }
        for name in h.keys() {
            let spelled = name.as_str().replace('_', "-");
            assert!(
                !(spelled.starts_with("x-client-")
                    || spelled.starts_with("x-forwarded-")
                    || spelled == "client-cert"
                    || spelled == "client-cert-chain"
                    || spelled == "forwarded"),
                "{name} survived {policy:?}"
            );
            if policy == Underscores::Drop {
                assert!(!name.as_str().contains('_'), "{name} survived drop");
            }
        }
    }
}

/// `identity.session_cookie`'s cookie handling: the first line is the cookie name, the rest
/// one `Cookie` header value and, read again, one `Set-Cookie` value. Laws: the cookie
/// removed from a header leaves no value of it, keeps every other pair, and what is left
/// is a valid header value whenever the input was; a parsed `Set-Cookie` names bytes of
/// its input.
pub fn cookies(data: &[u8]) {
    use crate::core::cookie;
    let (name, header) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"sid"[..], data),
    };
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    let _ = cookie::mentions(header, name);
    let before = cookie::values(header, name).count();
    // The configured name is never empty (validated); the quick test must not miss it.
    if before > 0 && !name.is_empty() {
        assert!(cookie::mentions(header, name));
    }
    let kept = cookie::without(header, name);
    if !name.trim().is_empty() && name.trim() == name {
        let left = kept.as_deref().unwrap_or_default();
        assert_eq!(
            cookie::values(left, name).count(),
            0,
            "{name:?} survives removal from {header:?}"
        );
    }
    if let Some(kept) = &kept
        && HeaderValue::from_bytes(header).is_ok()
    {
        assert!(HeaderValue::from_bytes(kept).is_ok(), "{kept:?}");
    }
    for now in [0, 1_700_000_000, i64::MAX, i64::MIN] {
        if let Some(sc) = cookie::parse_set_cookie(header, now) {
            let _ = sc.deletes(now);
            assert!(!sc.name.is_empty());
            assert!(sc.value.len() <= header.len());
        }
    }
}

/// The HTTP/2 control-frame guard over a client byte stream. Laws: the verdict does not
/// depend on how the stream is split into reads; the gateway side's frame boundary is
/// never further than one frame away.
pub fn h2_frames(data: &[u8]) {
    use crate::server::h2frames::{FrameGuard, Verdict};
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let limit = u32::from(cut % 16);
    let whole = FrameGuard::new(limit).client_bytes(stream, || 0);
    let mut split = FrameGuard::new(limit);
    let step = usize::from(cut).max(1);
    let mut verdict = Verdict::Fine;
    for chunk in stream.chunks(step) {
        if let v @ Verdict::Flood(_) = split.client_bytes(chunk, || 0) {
            verdict = v;
        }
    }
    assert_eq!(whole, verdict, "split every {step} bytes");
    let mut out = FrameGuard::new(limit);
    for chunk in stream.chunks(step) {
        out.gateway_bytes(chunk);
        assert!(out.gateway_rest() <= (1 << 24) + 9);
    }
}
