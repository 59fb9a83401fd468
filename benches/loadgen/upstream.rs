//! The fast upstream every gateway forwards to: plain HTTP/1.1 on loopback, keep-alive,
//! one thread, a fixed small answer. `GET /headers…` instead answers with the request
//! headers it received, so the benchmark can show what each gateway forwards.

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
            if head.starts_with(b"GET /headers") {
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
