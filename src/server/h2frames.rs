//! HTTP/2 control-frame flood limits, applied to the bytes of a connection as they pass.
//!
//! hyper (through `h2`) answers every SETTINGS and PING a client sends and accepts any
//! number of PRIORITY, WINDOW_UPDATE and empty DATA frames: a client can make the gateway
//! do work without limit at almost no cost to itself. [`FrameGuard`] reads the frame
//! headers of the client's byte stream (payloads are skipped, nothing is buffered beyond
//! one 9-byte header) and counts those frames per second. Over
//! `limits.h2_control_frames_per_second` the connection is abusive: the gateway's own
//! writes are finished at the next frame boundary (the outgoing stream is followed the
//! same way), a GOAWAY with `ENHANCE_YOUR_CALM` is written, and from then on the client's
//! bytes are discarded and the connection is dropped shortly after.

/// The client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: u32 = 24;

const TYPE_DATA: u8 = 0x0;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PRIORITY: u8 = 0x2;
const TYPE_SETTINGS: u8 = 0x4;
const TYPE_PING: u8 = 0x6;
const TYPE_GOAWAY: u8 = 0x7;
const TYPE_WINDOW_UPDATE: u8 = 0x8;
const FLAG_END_STREAM: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

pub use crate::core::flood::FloodKind;

/// The limited kind of a frame, if it is one.
fn flood_kind(kind: u8, flags: u8, len: u32) -> Option<FloodKind> {
    match kind {
        TYPE_SETTINGS => Some(FloodKind::Settings),
        TYPE_PING => Some(FloodKind::Ping),
        TYPE_PRIORITY => Some(FloodKind::Priority),
        TYPE_WINDOW_UPDATE => Some(FloodKind::WindowUpdate),
        TYPE_DATA if len == 0 && flags & FLAG_END_STREAM == 0 => Some(FloodKind::EmptyData),
        _ => None,
    }
}

/// Follows frame boundaries in one direction of an HTTP/2 byte stream.
#[derive(Debug)]
struct Frames {
    /// Bytes still to skip: the preface, or the payload of the current frame.
    skip: u32,
    head: [u8; 9],
    head_len: u8,
}

/// One frame header, complete.
struct Head {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Frames {
    fn new(preface: u32) -> Self {
        Frames {
            skip: preface,
            head: [0; 9],
            head_len: 0,
        }
    }

    /// True between frames: nothing of a frame has been seen without the rest.
    fn at_boundary(&self) -> bool {
        self.skip == 0 && self.head_len == 0
    }

    /// How many of the next bytes belong to the frame being passed (0 at a boundary).
    fn rest_of_frame(&self) -> usize {
        if self.head_len > 0 {
            // Unknown until the header is complete: at least the header's rest.
            9 - usize::from(self.head_len)
        } else {
            self.skip as usize
        }
    }

    /// Feeds `bytes`, calling `on_head` for each complete frame header.
    fn feed(&mut self, mut bytes: &[u8], mut on_head: impl FnMut(&Head)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = (self.skip as usize).min(bytes.len());
                self.skip -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            let have = usize::from(self.head_len);
            let n = (9 - have).min(bytes.len());
            self.head[have..have + n].copy_from_slice(&bytes[..n]);
            self.head_len += n as u8;
            bytes = &bytes[n..];
            if self.head_len == 9 {
                let h = &self.head;
                let head = Head {
                    len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                };
                self.head_len = 0;
                self.skip = head.len;
                on_head(&head);
            }
        }
    }
}

/// What the guard says after bytes from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// The limit was just exceeded by frames of this kind.
    Flood(FloodKind),
}

/// The per-connection state of the limit: a few integers.
#[derive(Debug)]
pub struct FrameGuard {
    from_client: Frames,
    to_client: Frames,
    limit: u32,
    /// Start of the current one-second window, in the caller's milliseconds.
    window_start: u64,
    count: u32,
    /// The highest stream the client opened, for the GOAWAY.
    last_stream: u32,
    flooded: bool,
}

impl FrameGuard {
    /// A guard allowing `per_second` limited frames per second (`0` = no limit).
    pub fn new(per_second: u32) -> Self {
        FrameGuard {
            from_client: Frames::new(PREFACE_LEN),
            to_client: Frames::new(0),
            limit: per_second,
            window_start: 0,
            count: 0,
            last_stream: 0,
            flooded: false,
        }
    }

    /// Bytes read from the client; `now_ms` is only consulted for limited frames.
    pub fn client_bytes(&mut self, bytes: &[u8], now_ms: impl Fn() -> u64) -> Verdict {
        if self.flooded {
            return Verdict::Fine;
        }
        let limit = self.limit;
        let mut verdict = Verdict::Fine;
        let (window_start, count, last_stream) = (
            &mut self.window_start,
            &mut self.count,
            &mut self.last_stream,
        );
        self.from_client.feed(bytes, |h| {
            if h.kind == TYPE_HEADERS && h.stream > *last_stream {
                *last_stream = h.stream;
            }
            let Some(kind) = flood_kind(h.kind, h.flags, h.len) else {
                return;
            };
            if limit == 0 || verdict != Verdict::Fine {
                return;
            }
            let now = now_ms();
            if now.saturating_sub(*window_start) >= 1000 {
                *window_start = now;
                *count = 0;
            }
            *count += 1;
            if *count > limit {
                verdict = Verdict::Flood(kind);
            }
        });
        if verdict != Verdict::Fine {
            self.flooded = true;
        }
        verdict
    }

    /// Bytes the gateway wrote to the client (taken by the stream).
    pub fn gateway_bytes(&mut self, bytes: &[u8]) {
        self.to_client.feed(bytes, |_| {});
    }

    /// How many more bytes of the gateway's current frame must be written before a
    /// frame of its own can be (0: at a boundary).
    pub fn gateway_rest(&self) -> usize {
        if self.to_client.at_boundary() {
            0
        } else {
            self.to_client.rest_of_frame()
        }
    }

    /// The GOAWAY (ENHANCE_YOUR_CALM) frame to send a flooding client.
    pub fn goaway(&self) -> [u8; 17] {
        let mut f = [0u8; 17];
        f[..3].copy_from_slice(&8u32.to_be_bytes()[1..]);
        f[3] = TYPE_GOAWAY;
        f[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
        f[13..].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn stream_of(pings: usize) -> Vec<u8> {
        let mut s = PREFACE.to_vec();
        s.extend(frame(TYPE_SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        s.extend(frame(TYPE_HEADERS, 0x5, 7, &[0x82, 0x84]));
        s.extend(frame(TYPE_DATA, 0, 7, &[1; 40]));
        for _ in 0..pings {
            s.extend(frame(TYPE_PING, 0, 0, &[9; 8]));
        }
        s
    }

    #[test]
    fn under_the_limit_is_fine_and_over_it_is_a_flood() {
        let mut g = FrameGuard::new(10);
        // SETTINGS + 9 PINGs = 10: allowed.
        assert_eq!(g.client_bytes(&stream_of(9), || 5), Verdict::Fine);
        // One more in the same second: flood.
        assert_eq!(
            g.client_bytes(&frame(TYPE_PING, 0, 0, &[0; 8]), || 900),
            Verdict::Flood(FloodKind::Ping)
        );
        let goaway = g.goaway();
        assert_eq!(goaway[3], TYPE_GOAWAY);
        assert_eq!(&goaway[9..13], &7u32.to_be_bytes(), "last stream opened");
        assert_eq!(&goaway[13..], &[0, 0, 0, 0xb]);
    }

    #[test]
    fn the_count_starts_again_each_second() {
        let mut g = FrameGuard::new(10);
        assert_eq!(g.client_bytes(&stream_of(9), || 0), Verdict::Fine);
        let ten: Vec<u8> = (0..10)
            .flat_map(|_| frame(TYPE_PING, 0, 0, &[0; 8]))
            .collect();
        assert_eq!(g.client_bytes(&ten, || 1000), Verdict::Fine);
        assert_eq!(
            g.client_bytes(&frame(TYPE_SETTINGS, 1, 0, &[]), || 1500),
            Verdict::Flood(FloodKind::Settings)
        );
    }

    #[test]
    fn split_reads_at_every_boundary_see_the_same_frames() {
        let mut whole = stream_of(30);
        whole.extend(frame(TYPE_DATA, 0, 7, &[]));
        let reference = {
            let mut g = FrameGuard::new(20);
            g.client_bytes(&whole, || 0)
        };
        assert_eq!(reference, Verdict::Flood(FloodKind::Ping));
        for cut in 0..whole.len() {
            let mut g = FrameGuard::new(20);
            let a = g.client_bytes(&whole[..cut], || 0);
            let b = g.client_bytes(&whole[cut..], || 0);
            let got = if a != Verdict::Fine { a } else { b };
            assert_eq!(got, reference, "cut at {cut}");
        }
        // One byte at a time.
        let mut g = FrameGuard::new(20);
        let mut got = Verdict::Fine;
        for b in &whole {
            if let Verdict::Flood(k) = g.client_bytes(std::slice::from_ref(b), || 0) {
                got = Verdict::Flood(k);
            }
        }
        assert_eq!(got, reference);
    }

    #[test]
    fn data_with_payload_or_end_stream_is_not_counted() {
        let mut g = FrameGuard::new(1);
        let mut s = PREFACE.to_vec();
        for _ in 0..50 {
            s.extend(frame(TYPE_DATA, 0, 1, b"x"));
            s.extend(frame(TYPE_DATA, FLAG_END_STREAM, 3, &[]));
        }
        assert_eq!(g.client_bytes(&s, || 0), Verdict::Fine);
        assert_eq!(
            g.client_bytes(
                &[frame(TYPE_DATA, 0, 1, &[]), frame(TYPE_DATA, 0, 1, &[])].concat(),
                || 0
            ),
            Verdict::Flood(FloodKind::EmptyData)
        );
    }

    #[test]
    fn zero_means_no_limit() {
        let mut g = FrameGuard::new(0);
        assert_eq!(g.client_bytes(&stream_of(10_000), || 0), Verdict::Fine);
    }

    #[test]
    fn the_gateway_side_finds_frame_boundaries() {
        let mut g = FrameGuard::new(10);
        assert_eq!(g.gateway_rest(), 0);
        let f = frame(TYPE_DATA, 0, 1, &[7; 100]);
        g.gateway_bytes(&f[..4]);
        assert_eq!(g.gateway_rest(), 5, "rest of the header");
        g.gateway_bytes(&f[4..9]);
        assert_eq!(g.gateway_rest(), 100);
        g.gateway_bytes(&f[9..60]);
        assert_eq!(g.gateway_rest(), 49);
        g.gateway_bytes(&f[60..]);
        assert_eq!(g.gateway_rest(), 0);
    }

    #[test]
    fn kinds_round_trip() {
        for k in FloodKind::ALL {
            assert_eq!(FloodKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(FloodKind::from_u8(0), None);
    }
}
