//! HTTP/2 control-frame floods (SETTINGS, PING, PRIORITY, WINDOW_UPDATE, empty DATA) are
//! bounded by `limits.h2_control_frames_per_second`: a flooding connection gets GOAWAY
//! ENHANCE_YOUR_CALM and is closed, counted in `certgate_h2_abuse_total{kind}`, while a
//! legitimate client is served throughout. Raw frames over real TLS.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Harness, Options, sample, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const GOAWAY: u8 = 0x7;
const PING: u8 = 0x6;
const SETTINGS: u8 = 0x4;
const PRIORITY: u8 = 0x2;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The frames in `bytes` as (type, flags, payload).
fn frames(bytes: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        if at + 9 + len > bytes.len() {
            break;
        }
        out.push((
            bytes[at + 3],
            bytes[at + 4],
            bytes[at + 9..at + 9 + len].to_vec(),
        ));
        at += 9 + len;
    }
    out
}

/// What a flooding connection saw.
struct Flood {
    /// Frames of the flood written before the gateway's GOAWAY arrived.
    sent: u64,
    /// The GOAWAY's error code, if one came.
    goaway: Option<u32>,
    /// ACKs (PING and SETTINGS) the gateway wrote before its GOAWAY: the work it did.
    answered: usize,
    /// From the first flood frame to the GOAWAY, and to the close.
    to_goaway: Option<Duration>,
    to_close: Option<Duration>,
}

/// Opens an HTTP/2 connection without a certificate and writes `unit` over and over
/// (batches of 256) until the gateway answers GOAWAY or 200,000 frames are out.
async fn flood(h: &Harness, unit: Vec<u8>) -> Flood {
    let raw = support::client::RawClient::build(
        h.listen(),
        &h.pki.server_ca.der,
        None,
        vec![b"h2".to_vec()],
    );
    let conn = within("connect", raw.connect()).await.expect("handshake");
    assert_eq!(conn.alpn().as_deref(), Some(&b"h2"[..]));
    let (mut rd, mut wr) = tokio::io::split(conn.stream);
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    wr.write_all(&hello).await.expect("preface");
    let started = Instant::now();
    let seen_goaway = Arc::new(AtomicBool::new(false));
    let reader = {
        let seen_goaway = seen_goaway.clone();
        tokio::spawn(async move {
            let mut bytes = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut goaway = None;
            let mut to_goaway = None;
            let mut answered = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let to_close = loop {
                match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
                    Err(_) => break None,
                    Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
                    Ok(Ok(n)) => {
                        bytes.extend_from_slice(&buf[..n]);
                        if goaway.is_none() {
                            // Only the tail can hold a new GOAWAY: parse what is whole.
                            let seen = frames(&bytes);
                            if let Some(at) = seen.iter().position(|(t, _, _)| *t == GOAWAY) {
                                let p = &seen[at].2;
                                answered = seen[..at]
                                    .iter()
                                    .filter(|(t, f, _)| {
                                        (*t == PING || *t == SETTINGS) && f & 1 == 1
                                    })
                                    .count();
                                goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                                to_goaway = Some(started.elapsed());
                                seen_goaway.store(true, Ordering::Relaxed);
                            }
                        }
                        // Keep memory small: once the GOAWAY is found, drop the rest.
                        if goaway.is_some() {
                            bytes.clear();
                        }
                    }
                }
            };
            (goaway, answered, to_goaway, to_close)
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let batch: Vec<u8> = (0..256).flat_map(|_| unit.clone()).collect();
    while !seen_goaway.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < 200_000 {
        match tokio::time::timeout(Duration::from_secs(5), wr.write_all(&batch)).await {
            Ok(Ok(())) => {
                sent.fetch_add(256, Ordering::Relaxed);
            }
            _ => break,
        }
    }
    let (goaway, answered, to_goaway, to_close) = reader.await.expect("reader");
    Flood {
        sent: sent.load(Ordering::Relaxed),
        goaway,
        answered,
        to_goaway,
        to_close,
    }
}

/// A legitimate HTTP/2 client with a certificate, asking for `/app` until `stop`.
fn legitimate(h: &Harness, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u32, u32)> {
    let alice = h.pki.client("alice");
    let client = h.client(Some(&alice));
    let url = h.url("/app");
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        while !stop.load(Ordering::Relaxed) || ok == 0 {
            match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => ok += 1,
                _ => failed += 1,
            }
        }
        (ok, failed)
    })
}

fn check(kind: &str, f: &Flood, limit: u64) {
    eprintln!(
        "{kind} flood: {} frames written by the client, {} answered before GOAWAY after {:?}, \
         closed after {:?}",
        f.sent, f.answered, f.to_goaway, f.to_close
    );
    assert_eq!(
        f.goaway,
        Some(0xb),
        "{kind} flood: the gateway answers GOAWAY ENHANCE_YOUR_CALM"
    );
    assert!(
        f.to_close.is_some(),
        "{kind} flood: the connection is closed"
    );
    // The gateway stops at the limit: it answers no more than `limit` frames (and the
    // ACK of the client's first SETTINGS); the client wrote more into its socket before
    // it read the GOAWAY, but fewer than the 200,000 it was ready to send.
    assert!(
        f.answered <= limit as usize + 1,
        "{kind} flood: the gateway answered {} frames over a limit of {limit}",
        f.answered
    );
    assert!(
        f.sent > limit && f.sent < 200_000,
        "{kind} flood: {} frames sent",
        f.sent
    );
}

#[tokio::test]
async fn ping_and_settings_floods_end_in_enhance_your_calm_while_others_are_served() {
    let h = Harness::with(Options::default()).await;
    let m = h.metrics_text().await;
    for kind in [
        "settings",
        "ping",
        "priority",
        "window_update",
        "empty_data",
    ] {
        assert_eq!(
            sample(&m, &format!("certgate_h2_abuse_total{{kind=\"{kind}\"}}")),
            Some(0.0),
            "{kind} is counted from 0"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let legit = legitimate(&h, stop.clone());

    let pings = flood(&h, frame(PING, 0, 0, &[7; 8])).await;
    check("PING", &pings, 1000);
    let settings = flood(&h, frame(SETTINGS, 0, 0, &[])).await;
    check("SETTINGS", &settings, 1000);
    let priority = flood(&h, frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16])).await;
    check("PRIORITY", &priority, 1000);

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = legit.await.expect("legitimate client");
    eprintln!("legitimate client during the floods: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "the legitimate client failed during the floods");

    let m = h.metrics_text().await;
    for kind in ["settings", "ping", "priority"] {
        assert_eq!(
            sample(&m, &format!("certgate_h2_abuse_total{{kind=\"{kind}\"}}")),
            Some(1.0),
            "one {kind} flood counted"
        );
    }
}

/// A client under the limit is answered and not cut: 500 PINGs in a burst get 500 ACKs.
#[tokio::test]
async fn pings_under_the_limit_are_answered() {
    let h = Harness::with(Options::default()).await;
    let raw = support::client::RawClient::build(
        h.listen(),
        &h.pki.server_ca.der,
        None,
        vec![b"h2".to_vec()],
    );
    let mut conn = within("connect", raw.connect()).await.expect("handshake");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..500u64 {
        hello.extend(frame(PING, 0, 0, &i.to_be_bytes()));
    }
    conn.write_all(&hello).await.expect("write");
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let acks = loop {
        let acks = frames(&bytes)
            .iter()
            .filter(|(t, f, _)| *t == PING && f & 1 == 1)
            .count();
        if acks >= 500 {
            break acks;
        }
        match tokio::time::timeout(Duration::from_secs(10), conn.stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
            other => panic!("connection ended or stalled after {acks} ACKs: {other:?}"),
        }
    };
    assert_eq!(acks, 500);
    assert!(
        !frames(&bytes).iter().any(|(t, _, _)| *t == GOAWAY),
        "no GOAWAY under the limit"
    );
    let m = h.metrics_text().await;
    assert_eq!(
        sample(&m, "certgate_h2_abuse_total{kind=\"ping\"}"),
        Some(0.0)
    );
}

/// `limits.h2_control_frames_per_second` is configurable: 0 turns the limit off.
#[tokio::test]
async fn a_lower_limit_cuts_sooner() {
    let h = Harness::with(Options {
        extra_limits: vec!["h2_control_frames_per_second: 50".into()],
        ..Options::default()
    })
    .await;
    let f = flood(&h, frame(PING, 0, 0, &[1; 8])).await;
    check("PING (limit 50)", &f, 50);
}
