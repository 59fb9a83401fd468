//! One large transfer through a gateway or straight to the upstream: `GET /stream/<n>`
//! (download) or `POST /sink` with an n-byte body (upload), timed from the request to the
//! last byte, while a sampler thread reads the server processes' resident memory
//! (`VmRSS`, and `VmHWM` at the end) from `/proc` every few milliseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{BodyEnd, Target, TlsArgs, parse_head};
use crate::procfs;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bound on one whole transfer.
const MAX_TRANSFER: Duration = Duration::from_secs(300);
/// Bytes per read or write.
const BUF: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    /// The server sends (`GET /stream/<bytes>`).
    Download,
    /// The client sends (`POST /sink`, Content-Length).
    Upload,
}

#[derive(Debug, Clone, Args)]
pub struct TransferArgs {
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Plain HTTP/1.1 without TLS (straight to the upstream); the TLS options are unused.
    #[arg(long)]
    pub plain: bool,
    #[arg(long, value_enum)]
    pub direction: Direction,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes: u64,
    /// Processes whose memory is sampled during the transfer (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Milliseconds between memory samples.
    #[arg(long, default_value_t = 10)]
    pub sample_ms: u64,
}

fn sum(pids: &[u32], f: fn(u32) -> Option<u64>) -> Option<u64> {
    let v: Vec<u64> = pids.iter().filter_map(|p| f(*p)).collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// Sends the request and moves the body; returns (status, body bytes moved).
async fn transfer<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    a: &TransferArgs,
) -> std::io::Result<(u16, u64)> {
    let host = &a.tls.sni;
    let mut chunk = vec![0u8; BUF];
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    match a.direction {
        Direction::Download => {
            let req = format!(
                "GET /stream/{} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: certgate-loadgen\r\nConnection: close\r\n\r\n",
                a.bytes
            );
            s.write_all(req.as_bytes()).await?;
            s.flush().await?;
        }
        Direction::Upload => {
            let req = format!(
                "POST /sink HTTP/1.1\r\nHost: {host}\r\nUser-Agent: certgate-loadgen\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                a.bytes
            );
            s.write_all(req.as_bytes()).await?;
            chunk.fill(b'u');
            let mut left = a.bytes;
            while left > 0 {
                let k = left.min(BUF as u64) as usize;
                s.write_all(&chunk[..k]).await?;
                left -= k as u64;
            }
            s.flush().await?;
        }
    }
    // The response head, then its body counted and dropped.
    let (status, hlen, framing) = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(h) = parse_head(&buf)? {
            break h;
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("response head over 64 KiB"));
        }
    };
    let mut got = (buf.len() - hlen) as u64;
    let want = match framing {
        BodyEnd::Length(n) => Some(n as u64),
        _ => None,
    };
    loop {
        if want.is_some_and(|w| got >= w) {
            break;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            if want.is_some() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            break;
        }
        got += n as u64;
    }
    let moved = match a.direction {
        Direction::Download => got,
        Direction::Upload => a.bytes,
    };
    Ok((status, moved))
}

pub fn run(a: TransferArgs) -> Result<Value, BoxError> {
    if !a.tls.addr.ip().is_loopback() {
        return Err(format!("{} is not a loopback address", a.tls.addr).into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pids = a.server_pid.clone();
    let rss_before = sum(&pids, procfs::rss_kb);
    let hwm_before = sum(&pids, procfs::hwm_kb);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, pids) = (stop.clone(), pids.clone());
        let every = Duration::from_millis(a.sample_ms.clamp(1, 1000));
        std::thread::spawn(move || {
            let (mut peak, mut samples) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                if let Some(r) = sum(&pids, procfs::rss_kb) {
                    peak = peak.max(r);
                    samples += 1;
                }
                std::thread::sleep(every);
            }
            (peak, samples)
        })
    };
    let cpu0 = procfs::cpu_all(&pids);
    let self0 = procfs::self_cpu_seconds();
    let t0 = Instant::now();
    let result = rt.block_on(async {
        let work = async {
            if a.plain {
                let mut s = TcpStream::connect(a.tls.addr).await?;
                s.set_nodelay(true)?;
                transfer(&mut s, &a).await
            } else {
                let target = Target::new(&a.tls, false).map_err(std::io::Error::other)?;
                let mut s = target.connect().await?;
                transfer(&mut s, &a).await
            }
        };
        tokio::time::timeout(MAX_TRANSFER, work)
            .await
            .map_err(|_| std::io::Error::other("transfer timed out"))?
    });
    let secs = t0.elapsed().as_secs_f64();
    let cpu = procfs::cpu_all(&pids).since(cpu0);
    let client_cpu = procfs::self_cpu_seconds() - self0;
    stop.store(true, Ordering::Relaxed);
    let (peak, samples) = sampler.join().unwrap_or((0, 0));
    let rss_after = sum(&pids, procfs::rss_kb);
    let hwm_after = sum(&pids, procfs::hwm_kb);
    let (status, moved) = result?;
    if !(200..300).contains(&status) {
        return Err(format!("status {status} after {moved} bytes").into());
    }
    let mib_s = moved as f64 / (1024.0 * 1024.0) / secs;
    let tag = |k: &str| {
        a.tls
            .tags
            .iter()
            .find_map(|t| t.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or("-")
            .to_string()
    };
    eprintln!(
        "    {:<14} {:<13} {:>7.0} MiB/s ({} MiB in {secs:.2} s, status {status})  RSS {} → peak {} MiB  server CPU {:.2} s  client {:.2} s",
        tag("server"),
        tag("case"),
        mib_s,
        moved >> 20,
        rss_before.map_or("–".into(), |r| format!("{:.1}", r as f64 / 1024.0)),
        if samples > 0 {
            format!("{:.1}", peak as f64 / 1024.0)
        } else {
            "–".into()
        },
        cpu.total(),
        client_cpu,
    );
    let mut out: serde_json::Map<String, Value> = a
        .tls
        .tags
        .iter()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let extra = json!({
        "mode": "transfer",
        "direction": format!("{:?}", a.direction).to_lowercase(),
        "plain": a.plain,
        "status": status,
        "bytes": moved,
        "seconds": secs,
        "mib_per_s": mib_s,
        "rss_before_kb": rss_before,
        "rss_peak_kb": (samples > 0).then_some(peak),
        "rss_after_kb": rss_after,
        "hwm_before_kb": hwm_before,
        "hwm_after_kb": hwm_after,
        "rss_samples": samples,
        "server_cpu_s": cpu.total(),
        "client_cpu_s": client_cpu,
    });
    if let Value::Object(m) = extra {
        out.extend(m);
    }
    Ok(Value::Object(out))
}
