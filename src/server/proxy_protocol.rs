//! PROXY protocol v1 and v2 (HAProxy's spec) on the listener, for certgate behind an L4
//! load balancer: the header names the real client, so logs, limits and `X-Forwarded-For`
//! see it instead of the balancer. Enabled by `listen_proxy_protocol: true`; then a
//! connection without a valid header is refused (a client that could skip the header
//! could not be told from the balancer).
//!
//! The header is read byte-exactly (never past its end), so the TLS ClientHello that
//! follows is left for rustls.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte v2 signature.
const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 line, CRLF included (spec: 107).
const V1_MAX: usize = 107;
/// Largest v2 payload accepted (addresses plus TLVs); the spec allows 65535, balancers
/// send far less.
const V2_MAX_LEN: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("connection closed before a complete PROXY header")]
    Closed,
    #[error("no PROXY protocol header (listen_proxy_protocol is on)")]
    Missing,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
}

/// Reads one PROXY header from `io`. Returns the client address it names, or `None` for
/// `UNKNOWN` / `LOCAL` (health checks of the balancer itself): the socket peer stands.
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Option<SocketAddr>, HeaderError> {
    let mut start = [0u8; 12];
    read_exact(io, &mut start).await?;
    if start == V2_SIG {
        return read_v2(io).await;
    }
    if !start.starts_with(b"PROXY ") {
        return Err(HeaderError::Missing);
    }
    // v1: the rest of the line, byte by byte so nothing after CRLF is consumed.
    let mut line = start.to_vec();
    loop {
        if line.ends_with(b"\r\n") {
            break;
        }
        if line.len() >= V1_MAX {
            return Err(HeaderError::V1("line longer than 107 bytes"));
        }
        let mut b = [0u8; 1];
        read_exact(io, &mut b).await?;
        line.push(b[0]);
    }
    parse_v1(&line)
}

async fn read_exact<R: AsyncRead + Unpin>(io: &mut R, buf: &mut [u8]) -> Result<(), HeaderError> {
    io.read_exact(buf)
        .await
        .map(|_| ())
        .map_err(|_| HeaderError::Closed)
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    let text =
        std::str::from_utf8(&line[..line.len() - 2]).map_err(|_| HeaderError::V1("not ASCII"))?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| HeaderError::V1("bad source address"))?;
            if (*proto == "TCP4") != ip.is_ipv4() {
                return Err(HeaderError::V1("address family does not match"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| HeaderError::V1("bad source port"))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(HeaderError::V1(
            "expected 'PROXY TCP4|TCP6 src dst sport dport' or 'PROXY UNKNOWN'",
        )),
    }
}

async fn read_v2<R: AsyncRead + Unpin>(io: &mut R) -> Result<Option<SocketAddr>, HeaderError> {
    let mut head = [0u8; 4];
    read_exact(io, &mut head).await?;
    let (ver_cmd, fam) = (head[0], head[1]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if ver_cmd >> 4 != 2 {
        return Err(HeaderError::V2("version is not 2"));
    }
    if len > V2_MAX_LEN {
        return Err(HeaderError::V2("header too long"));
    }
    let mut payload = vec![0u8; len];
    read_exact(io, &mut payload).await?;
    match ver_cmd & 0x0f {
        0x0 => return Ok(None), // LOCAL
        0x1 => {}               // PROXY
        _ => return Err(HeaderError::V2("unknown command")),
    }
    match fam {
        // TCP or UDP over IPv4
        0x11 | 0x12 => {
            if payload.len() < 12 {
                return Err(HeaderError::V2("IPv4 addresses truncated"));
            }
            let ip = Ipv4Addr::new(payload[0], payload[1], payload[2], payload[3]);
            let port = u16::from_be_bytes([payload[8], payload[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        // TCP or UDP over IPv6
        0x21 | 0x22 => {
            if payload.len() < 36 {
                return Err(HeaderError::V2("IPv6 addresses truncated"));
            }
            let mut o = [0u8; 16];
            o.copy_from_slice(&payload[..16]);
            let port = u16::from_be_bytes([payload[32], payload[33]]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port)))
        }
        // UNSPEC or UNIX: no usable client address.
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, HeaderError>, Vec<u8>) {
        let mut r: &[u8] = bytes;
        let res = read_header(&mut r).await;
        (res, r.to_vec())
    }

    #[tokio::test]
    async fn v1_tcp4_and_rest_untouched() {
        let (res, rest) =
            parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8443\r\n\x16\x03\x01").await;
        assert_eq!(res, Ok(Some("203.0.113.7:51234".parse().unwrap())));
        assert_eq!(rest, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn v1_tcp6_and_unknown() {
        let (res, _) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n").await;
        assert_eq!(res, Ok(Some("[2001:db8::1]:4000".parse().unwrap())));
        let (res, rest) = parse(b"PROXY UNKNOWN\r\nX").await;
        assert_eq!(res, Ok(None));
        assert_eq!(rest, b"X");
    }

    #[tokio::test]
    async fn v1_errors() {
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4\r\n").await.0,
            Err(HeaderError::V1(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n").await.0,
            Err(HeaderError::V1(_))
        ));
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(parse(&long).await.0, Err(HeaderError::V1(_))));
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00")
                .await
                .0,
            Err(HeaderError::Missing)
        );
        assert_eq!(parse(b"PROXY TC").await.0, Err(HeaderError::Closed));
    }

    fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = V2_SIG.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[tokio::test]
    async fn v2_ipv4_ipv6_local() {
        let mut p4 = vec![198, 51, 100, 9, 10, 0, 0, 1];
        p4.extend_from_slice(&40000u16.to_be_bytes());
        p4.extend_from_slice(&8443u16.to_be_bytes());
        p4.extend_from_slice(&[0x03, 0x00, 0x04, 1, 2, 3, 4]); // a TLV, ignored
        let mut bytes = v2(1, 0x11, &p4);
        bytes.extend_from_slice(b"TLS");
        let (res, rest) = parse(&bytes).await;
        assert_eq!(res, Ok(Some("198.51.100.9:40000".parse().unwrap())));
        assert_eq!(rest, b"TLS");

        let mut p6 = vec![0u8; 36];
        p6[0] = 0x20;
        p6[1] = 0x01;
        p6[15] = 1;
        p6[32..34].copy_from_slice(&5555u16.to_be_bytes());
        let (res, _) = parse(&v2(1, 0x21, &p6)).await;
        assert_eq!(res, Ok(Some("[2001::1]:5555".parse().unwrap())));

        let (res, _) = parse(&v2(0, 0x00, &[])).await;
        assert_eq!(res, Ok(None));
    }

    #[tokio::test]
    async fn v2_errors() {
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2, 3])).await.0,
            Err(HeaderError::V2(_))
        ));
        let mut bad = v2(1, 0x11, &[0; 12]);
        bad[12] = 0x31; // version 3
        assert!(matches!(parse(&bad).await.0, Err(HeaderError::V2(_))));
        let mut huge = V2_SIG.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&huge).await.0, Err(HeaderError::V2(_))));
    }
}
