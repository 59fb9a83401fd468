//! Text forms used everywhere (headers, store keys, admin URLs, logs): serials,
//! fingerprints (hex), account ids, RFC 3339 times and RFC 4514 names.

use std::fmt::Write as _;

use x509_parser::x509::X509Name;

/// `[A-Za-z0-9._@+-]{1,128}`.
pub fn is_valid_account(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'+' | b'-'))
}

/// Lowercase hex of a serial's big-endian bytes without a leading sign (zero) byte.
pub fn serial_hex(raw: &[u8]) -> String {
    let mut raw = raw;
    while raw.len() > 1 && raw[0] == 0 {
        raw = &raw[1..];
    }
    hex(raw)
}

/// Normalises a serial typed by a person: accepts `abcd`, `AB:CD`, `0xab cd`, with or
/// without a leading `00` sign byte. Returns `None` for anything that is not hex.
pub fn normalize_serial(input: &str) -> Option<String> {
    let s = input.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 128 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut d = digits.to_ascii_lowercase();
    if d.len() % 2 == 1 {
        d.insert(0, '0');
    }
    // Strip leading zero bytes, keep at least one byte.
    while d.len() > 2 && d.starts_with("00") {
        d.drain(..2);
    }
    Some(d)
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// RFC 3339 UTC with second precision, e.g. `2026-11-25T10:00:00Z`.
/// The bytes of an even-length hex string (either case); `None` for anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

pub fn rfc3339(unix: i64) -> String {
    match ::time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => {
            let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
            let (h, mi, s) = (t.hour(), t.minute(), t.second());
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
        }
        Err(_) => unix.to_string(),
    }
}

/// RFC 4514 string of a name: RDNs in reverse order, comma separated, with escaping.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type();
            let short = match oid.to_id_string().as_str() {
                "2.5.4.3" => Some("CN"),
                "2.5.4.7" => Some("L"),
                "2.5.4.8" => Some("ST"),
                "2.5.4.10" => Some("O"),
                "2.5.4.11" => Some("OU"),
                "2.5.4.6" => Some("C"),
                "2.5.4.9" => Some("STREET"),
                "0.9.2342.19200300.100.1.25" => Some("DC"),
                "0.9.2342.19200300.100.1.1" => Some("UID"),
                _ => None,
            };
            match (short, atv.as_str()) {
                (Some(k), Ok(v)) => {
                    out.push_str(k);
                    out.push('=');
                    escape_4514(v, &mut out);
                }
                (key, _) => {
                    // Unknown type or non-string value: dotted OID = #hex of the DER value.
                    match key {
                        Some(k) => out.push_str(k),
                        None => out.push_str(&oid.to_id_string()),
                    }
                    out.push_str("=#");
                    out.push_str(&hex(atv.attr_value().data));
                }
            }
        }
    }
    out
}

fn escape_4514(v: &str, out: &mut String) {
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
}

/// PEM text of one DER object, 64 columns.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// The error and its sources, e.g. "client error (Connect): tcp connect error: Connection
/// refused (os error 111)".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_forms() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(normalize_serial("8F:01").as_deref(), Some("8f01"));
        assert_eq!(normalize_serial("00:8F:01").as_deref(), Some("8f01"));
        assert_eq!(normalize_serial("0x1").as_deref(), Some("01"));
        assert_eq!(normalize_serial("zz"), None);
        assert_eq!(normalize_serial(""), None);
        assert_eq!(normalize_serial("../etc"), None);
    }

    #[test]
    fn account_ids() {
        assert!(is_valid_account("alice"));
        assert!(is_valid_account("a.b_c@d+e-f"));
        assert!(!is_valid_account(""));
        assert!(!is_valid_account("a b"));
        assert!(!is_valid_account("a/b"));
        assert!(!is_valid_account(&"a".repeat(129)));
    }

    #[test]
    fn rfc3339_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_790_000_000), "2026-09-21T14:13:20Z");
    }

    #[test]
    fn pem_encode_reads_back_and_wraps_at_64() {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject as _;
        let der: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        let pem = pem_encode("CERTIFICATE", &der);
        assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
        let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), &der[..]);
    }

    #[test]
    fn error_chain_joins_every_source() {
        let inner = std::io::Error::other("refused");
        let outer = std::io::Error::new(std::io::ErrorKind::NotConnected, inner);
        assert_eq!(error_chain(&outer), "refused");
        #[derive(Debug, thiserror::Error)]
        #[error("connect")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(
            error_chain(&Outer(std::io::Error::other("refused"))),
            "connect: refused"
        );
    }

    #[test]
    fn escape() {
        let mut s = String::new();
        escape_4514(" a,b+c ", &mut s);
        assert_eq!(s, "\\ a\\,b\\+c\\ ");
    }
}
