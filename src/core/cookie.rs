//! Cookies as `identity.session_cookie` needs them: the values of one cookie name in a
//! request's `Cookie` headers (RFC 6265 §5.4), that cookie removed from them, and what a
//! response's `Set-Cookie` says about it (value and lifetime, RFC 6265 §5.2). Pure
//! functions over header bytes; nothing here allocates for a request without the cookie.

/// The values of the cookies named `name` in one `Cookie` header value.
pub fn values<'a>(header: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    header.split(|&b| b == b';').filter_map(move |pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        (trim(&pair[..eq]) == name.as_bytes()).then(|| unquote(trim(&pair[eq + 1..])))
    })
}

/// Whether one `Cookie` header value holds `name` (a quick test before [`values`]).
pub fn mentions(header: &[u8], name: &str) -> bool {
    let n = name.as_bytes();
    !n.is_empty() && header.windows(n.len()).any(|w| w == n)
}

/// `header` without the cookies named `name`; `None` when nothing is left.
pub fn without(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(header.len());
    for pair in header.split(|&b| b == b';') {
        let p = trim(pair);
        if p.is_empty() {
            continue;
        }
        let named = p
            .iter()
            .position(|&b| b == b'=')
            .is_some_and(|eq| trim(&p[..eq]) == name.as_bytes());
        if named {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(p);
    }
    (!out.is_empty()).then_some(out)
}

/// What one `Set-Cookie` says about the cookie it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    /// Unix seconds at which the cookie ends: from `Max-Age` (which wins) or `Expires`;
    /// `None` for a session cookie (it lives until the browser closes).
    pub expires_at: Option<i64>,
}

impl SetCookie<'_> {
    /// Whether this `Set-Cookie` deletes the cookie (empty value, or an end in the past).
    pub fn deletes(&self, now: i64) -> bool {
        self.value.is_empty() || self.expires_at.is_some_and(|e| e <= now)
    }
}

/// Parses one `Set-Cookie` header value; `None` when it has no `name=value` pair.
pub fn parse_set_cookie(header: &[u8], now: i64) -> Option<SetCookie<'_>> {
    let mut parts = header.split(|&b| b == b';');
    let first = trim(parts.next()?);
    let eq = first.iter().position(|&b| b == b'=')?;
    let name = trim(&first[..eq]);
    if name.is_empty() {
        return None;
    }
    let value = unquote(trim(&first[eq + 1..]));
    let (mut max_age, mut expires) = (None, None);
    for attr in parts {
        let attr = trim(attr);
        let (k, v) = match attr.iter().position(|&b| b == b'=') {
            Some(i) => (trim(&attr[..i]), trim(&attr[i + 1..])),
            None => (attr, &[][..]),
        };
        if k.eq_ignore_ascii_case(b"max-age") {
            // RFC 6265 §5.2.2: digits with an optional leading '-'; anything else ignored.
            let s = std::str::from_utf8(v).ok();
            if let Some(n) = s.and_then(|s| s.parse::<i64>().ok()) {
                max_age = Some(if n <= 0 {
                    i64::MIN
                } else {
                    now.saturating_add(n)
                });
            }
        } else if k.eq_ignore_ascii_case(b"expires") {
            expires = std::str::from_utf8(v)
                .ok()
                .and_then(|s| httpdate::parse_http_date(s).ok())
                .map(|t| match t.duration_since(std::time::UNIX_EPOCH) {
                    Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    Err(_) => i64::MIN,
                });
        }
    }
    Some(SetCookie {
        name,
        value,
        expires_at: max_age.or(expires),
    })
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end.max(start)]
}

fn unquote(b: &[u8]) -> &[u8] {
    if b.len() >= 2 && b[0] == b'"' && b[b.len() - 1] == b'"' {
        &b[1..b.len() - 1]
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_one_name() {
        let h = b"a=1; sessionid=abc; b=\"2\"; sessionid = \"def\"";
        let v: Vec<&[u8]> = values(h, "sessionid").collect();
        assert_eq!(v, vec![&b"abc"[..], &b"def"[..]]);
        assert_eq!(values(b"xsessionid=1", "sessionid").count(), 0);
        assert_eq!(values(b"sessionidx=1", "sessionid").count(), 0);
        assert_eq!(values(b"", "sessionid").count(), 0);
        assert!(mentions(h, "sessionid"));
        assert!(!mentions(b"a=1", "sessionid"));
    }

    #[test]
    fn without_one_name() {
        assert_eq!(
            without(b"a=1; sessionid=abc;b=2", "sessionid").as_deref(),
            Some(&b"a=1; b=2"[..])
        );
        assert_eq!(without(b"sessionid=abc", "sessionid"), None);
        assert_eq!(without(b" ; ", "sessionid"), None);
    }

    #[test]
    fn set_cookie_lifetimes() {
        let now = 1_000_000;
        let c = parse_set_cookie(b"sessionid=abc; Path=/; HttpOnly; Max-Age=3600", now).unwrap();
        assert_eq!((c.name, c.value), (&b"sessionid"[..], &b"abc"[..]));
        assert_eq!(c.expires_at, Some(now + 3600));
        assert!(!c.deletes(now));
        let c = parse_set_cookie(b"s=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT", now).unwrap();
        assert_eq!(c.expires_at, Some(1_445_412_480));
        // Max-Age wins over Expires.
        let c = parse_set_cookie(
            b"s=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Max-Age=10",
            now,
        )
        .unwrap();
        assert_eq!(c.expires_at, Some(now + 10));
        assert!(
            parse_set_cookie(b"s=1; Max-Age=0", now)
                .unwrap()
                .deletes(now)
        );
        assert!(parse_set_cookie(b"s=; Path=/", now).unwrap().deletes(now));
        assert_eq!(parse_set_cookie(b"s=1", now).unwrap().expires_at, None);
        assert_eq!(
            parse_set_cookie(b"s=1; Max-Age=soon", now)
                .unwrap()
                .expires_at,
            None
        );
        assert!(parse_set_cookie(b"novalue", now).is_none());
        assert!(parse_set_cookie(b"=x", now).is_none());
    }
}
