//! The fast upstream every gateway forwards to: plain HTTP/1.1 on loopback, keep-alive,
//! one thread, a fixed small answer. `GET /headers…` instead answers with the request
//! headers it received, so the benchmark can show what each gateway forwards.
//!
//! Two streaming endpoints for the transfer cases, neither of which buffers the body:
//! `GET /stream/<bytes>` answers with that many bytes (Content-Length, written from one
//! fixed 256 KiB buffer), and `POST /sink` (or PUT) reads the request body, Content-Length
//! or chunked, discards it and answers with the byte count.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Args)]
pub struct UpstreamArgs {
    /// Address to listen on (loopback only; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Write the bound port to this file once listening.
    #[arg(long)]
    pub port_file: Option<PathBuf>,
    /// Exit after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub lifetime: u64,
}

const BODY: &str = "{\"ok\":true}\n";

fn fixed_response() -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

/// The request headers, one per line, as a text/plain response.
fn headers_response(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut body = String::new();
    for line in text.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        body.push_str(line);
        body.push('\n');
    }
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Bytes written per write of a streamed body.
const CHUNK: usize = 256 * 1024;

fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(head)
        .ok()?
        .split("\r\n")
        .skip(1)
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
}

/// `GET /stream/<n>`: n bytes of body, written as they go.
async fn stream_out(s: &mut TcpStream, n: u64) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    let chunk = vec![b'x'; CHUNK];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        s.write_all(&chunk[..k]).await?;
        left -= k as u64;
    }
    Ok(())
}

/// Reads exactly `n` body bytes, `have` of which are already in `buf[..have]`; returns
/// what was read past them (the start of the next request), which stays in `buf`.
async fn discard(s: &mut TcpStream, buf: &mut [u8], have: usize, n: u64) -> std::io::Result<usize> {
    if (have as u64) >= n {
        let extra = have - n as usize;
        buf.copy_within(n as usize..have, 0);
        return Ok(extra);
    }
    let mut left = n - have as u64;
    while left > 0 {
        let want = (left.min(buf.len() as u64)) as usize;
        let k = s.read(&mut buf[..want]).await?;
        if k == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        left -= k as u64;
    }
    Ok(0)
}

/// Reads and discards a chunked body (extensions and trailers ignored), `have` bytes of
/// which are already in `buf`; returns (body bytes, bytes left over in `buf`).
async fn discard_chunked(
    s: &mut TcpStream,
    buf: &mut [u8],
    mut have: usize,
) -> std::io::Result<(u64, usize)> {
    let bad = || std::io::Error::other("bad chunked body");
    let mut total = 0u64;
    loop {
        // The chunk-size line.
        let line_end = loop {
            if let Some(p) = buf[..have].windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            if have == buf.len() {
                return Err(bad());
            }
            let k = s.read(&mut buf[have..]).await?;
            if k == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            have += k;
        };
        let line = std::str::from_utf8(&buf[..line_end]).map_err(|_| bad())?;
        let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        buf.copy_within(line_end + 2..have, 0);
        have -= line_end + 2;
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                if let Some(p) = buf[..have].windows(2).position(|w| w == b"\r\n") {
                    let empty = p == 0;
                    buf.copy_within(p + 2..have, 0);
                    have -= p + 2;
                    if empty {
                        return Ok((total, have));
                    }
                    continue;
                }
                let k = s.read(&mut buf[have..]).await?;
                if k == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                have += k;
            }
        }
        // The chunk and its CRLF.
        have = discard(s, buf, have, size + 2).await?;
        total += size;
    }
}

async fn serve_conn(mut s: TcpStream, fixed: &'static [u8]) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let mut out = Vec::with_capacity(4096);
    loop {
        if filled == buf.len() {
            return; // a head larger than 64 KiB: not from a benchmark
        }
        let n = match s.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        filled += n;
        // Answer every complete request head (GET requests carry no body).
        let mut start = 0;
        while let Some(end) = buf[start..filled]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| start + p + 4)
        {
            let head = &buf[start..end];
            if let Some(n) = head
                .strip_prefix(b"GET /stream/")
                .and_then(|r| r.split(|b| *b == b' ').next())
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
            {
                if !out.is_empty() && s.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                if stream_out(&mut s, n).await.is_err() {
                    return;
                }
            } else if head.starts_with(b"POST /sink") || head.starts_with(b"PUT /sink") {
                let chunked = header(head, "transfer-encoding")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                let length = header(head, "content-length").and_then(|v| v.parse::<u64>().ok());
                if !out.is_empty() && s.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                // The body starts after the head: move it to the front of the buffer.
                buf.copy_within(end..filled, 0);
                let have = filled - end;
                let got = match (chunked, length) {
                    (true, _) => discard_chunked(&mut s, &mut buf, have).await,
                    (false, Some(n)) => discard(&mut s, &mut buf, have, n).await.map(|l| (n, l)),
                    (false, None) => Ok((0, have)),
                };
                let Ok((bytes, left)) = got else {
                    return;
                };
                let body = format!("{{\"received\":{bytes}}}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                filled = left;
                start = 0;
                continue;
            } else if head.starts_with(b"GET /headers") {
                out.extend_from_slice(&headers_response(head));
            } else {
                out.extend_from_slice(fixed);
            }
            start = end;
        }
        if start > 0 {
            buf.copy_within(start..filled, 0);
            filled -= start;
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

pub fn run(a: UpstreamArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if !a.listen.ip().is_loopback() {
        return Err(format!("{} is not a loopback address", a.listen).into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fixed: &'static [u8] = Box::leak(fixed_response().into_boxed_slice());
    rt.block_on(async move {
        let listener = TcpListener::bind(a.listen).await?;
        let port = listener.local_addr()?.port();
        if let Some(f) = &a.port_file {
            std::fs::write(f, format!("{port}\n"))?;
        }
        let serve = async {
            loop {
                if let Ok((s, _)) = listener.accept().await {
                    tokio::spawn(serve_conn(s, fixed));
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(a.lifetime), serve).await;
        Ok(())
    })
}
