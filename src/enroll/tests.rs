//! Enrollment's pure parts: form decoding, CSRs in PEM and DER, the failure limiter, ticket
//! shapes and CRL serials.

use std::net::IpAddr;

use super::*;

#[test]
fn form_decoding() {
    let f = form_fields(b"ticket=abc_-1&passphrase=a+b%26c%3D%C3%A9&x").unwrap();
    assert_eq!(
        f,
        vec![
            ("ticket".into(), "abc_-1".into()),
            ("passphrase".into(), "a b&c=é".into()),
            ("x".into(), "".into()),
        ]
    );
    assert!(form_fields(b"a=%ff").is_err());
    assert!(form_fields(&[0xff]).is_err());
    assert_eq!(query_param("a=1&ticket=T", "ticket").as_deref(), Some("T"));
    assert_eq!(query_param("a=1", "ticket"), None);
}

#[test]
fn csr_pem_and_der() {
    let key = ca::new_key().unwrap();
    let csr = rcgen::CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let der = csr.der().to_vec();
    let pem = csr.pem().unwrap();
    assert_eq!(csr_der(pem.as_bytes()).unwrap(), der);
    assert_eq!(csr_der(&der).unwrap(), der);
    let new = pem.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
    assert_eq!(csr_der(new.as_bytes()).unwrap(), der);
    assert!(ca::csr_public_key(&der).is_ok());
    for bad in [
        &b""[..],
        b"hello",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA",
        b"\xff\xfe",
    ] {
        let r = csr_der(bad).and_then(|d| ca::csr_public_key(&d).map(|_| ()));
        assert!(r.is_err(), "{bad:?}");
    }
    // Truncated and bit-flipped DER never panics.
    for n in 0..der.len() {
        let _ = ca::csr_public_key(&der[..n]);
    }
    let mut flipped = der.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(ca::csr_public_key(&flipped).is_err());
}

#[test]
fn limiter_counts_per_address_and_v6_block() {
    let l = FailureLimiter::new();
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let b: IpAddr = "192.0.2.2".parse().unwrap();
    for _ in 0..MAX_FAILED_ATTEMPTS {
        assert!(!l.address_over(a));
        l.failed(a, None);
    }
    assert!(l.address_over(a));
    assert!(!l.address_over(b));
    let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
    for _ in 0..MAX_FAILED_ATTEMPTS {
        l.failed(v6a, None);
    }
    assert!(l.address_over(v6b), "same /64");
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    assert!(l.address_over(mapped));
}

#[test]
fn limiter_counts_per_ticket_across_addresses() {
    let l = FailureLimiter::new();
    let spent = ticket::hash("a-used-link-opened-again-and-again");
    for i in 0..MAX_FAILED_ATTEMPTS {
        assert!(!l.ticket_over(&spent));
        // A different address each time: the ticket's own count still grows.
        l.failed(IpAddr::from([198, 51, 100, i as u8]), Some(&spent));
    }
    assert!(l.ticket_over(&spent));
    assert!(!l.ticket_over(&ticket::hash("another-ticket-entirely")));
    assert!(!l.address_over(IpAddr::from([198, 51, 100, 1])));
}

#[test]
fn ticket_sanity() {
    assert!(plausible_ticket(&ticket::generate()));
    assert!(!plausible_ticket(""));
    assert!(!plausible_ticket("short"));
    assert!(!plausible_ticket(&"a".repeat(200)));
    assert!(!plausible_ticket("aaaaaaaaaaaaaaaaaaaa/aaaaaaaaaaaaa"));
}

#[test]
fn hex_serials() {
    assert_eq!(hex_bytes("0a1b"), Some(vec![0x0a, 0x1b]));
    assert_eq!(hex_bytes("abc"), None);
    assert_eq!(hex_bytes("zz"), None);
    assert_eq!(hex_bytes(""), None);
}
