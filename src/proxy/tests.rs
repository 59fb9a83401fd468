//! Header stripping and hop-by-hop handling, unit by unit.

use super::*;

#[test]
fn strips_every_identity_header() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("x-client-account", "mallory"),
        ("X-Client-Cert-Serial", "01"),
        ("client-cert", ":AAAA:"),
        ("client-cert-chain", ":AAAA:"),
        ("x-forwarded-client-cert", "Hash=00"),
        ("forwarded", "for=1.2.3.4"),
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "evil"),
        ("accept", "*/*"),
        ("x-clientele", "keep"),
    ] {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_static(v),
        );
    }
    strip_identity_headers(&mut h, Underscores::Allow).unwrap();
    let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
    left.sort();
    assert_eq!(left, vec!["accept", "x-clientele"]);
}

fn map(names: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for n in names {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_static("v"),
        );
    }
    h
}

fn names(h: &HeaderMap) -> Vec<String> {
    let mut v: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
    v.sort();
    v
}

/// Spellings a CGI-style app reads as an identity header (`_` and `-` are one byte to it).
const UNDERSCORED_IDENTITY: [&str; 9] = [
    "X_Client_Account",
    "x-client_account",
    "x_client-cert-serial",
    "Client_Cert",
    "client-cert_chain",
    "X_Forwarded_For",
    "x_forwarded_client_cert",
    "X_Client_Cert_Serial",
    "x_forwarded-host",
];

#[test]
fn identity_headers_spelled_with_underscores_are_stripped_under_every_policy() {
    for policy in [Underscores::Allow, Underscores::Drop] {
        let mut h = map(&UNDERSCORED_IDENTITY);
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(strip_identity_headers(&mut h, policy), Ok(()), "{policy:?}");
        assert_eq!(names(&h), vec!["accept"], "{policy:?}");
    }
    for name in UNDERSCORED_IDENTITY {
        let mut h = map(&[name]);
        assert!(
            strip_identity_headers(&mut h, Underscores::Reject).is_err(),
            "{name} passed headers.underscores: reject"
        );
    }
}

#[test]
fn underscore_policy_decides_the_other_names() {
    let base = ["accept", "x-app_token", "x-app-token", "x-clientele"];
    let mut h = map(&base);
    strip_identity_headers(&mut h, Underscores::Allow).unwrap();
    assert_eq!(
        names(&h),
        vec!["accept", "x-app-token", "x-app_token", "x-clientele"]
    );

    let mut h = map(&base);
    strip_identity_headers(&mut h, Underscores::Drop).unwrap();
    assert_eq!(names(&h), vec!["accept", "x-app-token", "x-clientele"]);

    let mut h = map(&base);
    assert_eq!(
        strip_identity_headers(&mut h, Underscores::Reject),
        Err(UnderscoreInName(HeaderName::from_static("x-app_token")))
    );
    // Without any `_` name, reject lets the request through (identity headers go).
    let mut h = map(&["accept", "x-client-account"]);
    assert_eq!(strip_identity_headers(&mut h, Underscores::Reject), Ok(()));
    assert_eq!(names(&h), vec!["accept"]);
}

#[test]
fn same_spelling_treats_only_underscore_and_dash_alike() {
    assert!(same_spelling(b"x_client_account", b"x-client-account"));
    assert!(same_spelling(b"forwarded", b"forwarded"));
    assert!(!same_spelling(b"x.client.account", b"x-client-account"));
    assert!(!same_spelling(b"x-client-accoun", b"x-client-account"));
    // Only the client's side maps `_`: a pattern never contains one.
    assert!(!same_spelling(b"x-client-account", b"x_client_account"));
}

#[test]
fn hop_by_hop_and_connection_listed_headers_removed() {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, X-Secret, Upgrade"),
    );
    h.insert("x-secret", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    let up = strip_hop_by_hop(&mut h);
    assert_eq!(up.as_ref().map(|v| v.as_bytes()), Some(&b"websocket"[..]));
    assert_eq!(h.len(), 1);
    assert!(h.contains_key(header::ACCEPT));
}

#[test]
fn no_hop_by_hop_headers_leaves_the_map_alone() {
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    h.insert("x-custom", HeaderValue::from_static("1"));
    assert!(strip_hop_by_hop(&mut h).is_none());
    assert_eq!(h.len(), 2);
}

#[test]
fn right_size_keeps_every_value_in_order() {
    let mut h = HeaderMap::with_capacity(64);
    h.append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
    h.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert("x-app", HeaderValue::from_static("v"));
    let before: Vec<_> = h.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    right_size(&mut h);
    assert!(h.capacity() < 64);
    let after: Vec<_> = h.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(before, after);
}

#[test]
fn upgrade_header_without_connection_upgrade_is_dropped() {
    let mut h = HeaderMap::new();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    assert!(strip_hop_by_hop(&mut h).is_none());
    assert!(h.is_empty());
}
