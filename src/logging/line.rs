//! Access lines, formatted by hand in the shape the rest of the log has.
//!
//! The general formatter of the log visits each field through `dyn Debug`, which costs
//! tens of thousands of instructions for a line of twenty fields; an access line is
//! written per request, so it is built here directly, field by field, into a reused
//! buffer: the same text (`2026-12-07T20:40:35.235266Z  INFO certgate::access: request
//! key="value" n=1`) or flat JSON object (`{"timestamp":…,"level":"INFO","message":…,
//! …,"target":"certgate::access"}`) as every other line, with strings escaped the same
//! way (no raw control character ever reaches the log).

use std::cell::RefCell;
use std::fmt::Write as _;

use crate::config::LogFormat;

/// The access log's target, as filters (`log.level`, `CERTGATE_LOG`) name it.
const ACCESS_TARGET: &str = "certgate::access";

thread_local! {
    /// The line being built (its allocation reused) and the formatted current second.
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch { buf: String::new(), second: u64::MAX, stamp: String::new() })
    };
}

struct Scratch {
    buf: String,
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    stamp: String,
}

/// One access line being built; [`AccessLine::write`] hands it to the log.
pub struct AccessLine {
    buf: String,
    json: bool,
    /// The process's log is not installed (library use): the line goes to `tracing` whole.
    fallback: bool,
}

impl AccessLine {
    /// Starts the line for the event `message` at level INFO. The caller has checked that
    /// the access target is enabled at INFO.
    pub fn info(message: &str) -> Self {
        let format = super::format();
        let json = matches!(format, Some(LogFormat::Json));
        let buf = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let mut buf = std::mem::take(&mut s.buf);
            buf.clear();
            if format.is_none() {
                return buf;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            if s.second != now.as_secs() {
                s.second = now.as_secs();
                s.stamp = second_stamp(now.as_secs());
            }
            if json {
                buf.push_str("{\"timestamp\":\"");
            }
            buf.push_str(&s.stamp);
            buf.push('.');
            push_padded(&mut buf, u64::from(now.subsec_micros()), 6);
            buf.push('Z');
            buf
        });
        let mut line = AccessLine {
            buf,
            json,
            fallback: format.is_none(),
        };
        if json {
            line.buf.push_str("\",\"level\":\"INFO\",\"message\":");
            json_str(&mut line.buf, message);
        } else if !line.fallback {
            line.buf.push_str("  INFO ");
            line.buf.push_str(ACCESS_TARGET);
            line.buf.push_str(": ");
            line.buf.push_str(message);
        } else {
            line.buf.push_str(message);
        }
        line
    }

    fn key(&mut self, key: &str) {
        if self.json {
            self.buf.push_str(",\"");
            self.buf.push_str(key);
            self.buf.push_str("\":");
        } else {
            self.buf.push(' ');
            self.buf.push_str(key);
            self.buf.push('=');
        }
    }

    /// A string field, quoted and escaped; left out when `None`.
    pub fn str(&mut self, key: &str, v: Option<&str>) -> &mut Self {
        if let Some(v) = v {
            self.key(key);
            if self.json {
                json_str(&mut self.buf, v);
            } else {
                debug_str(&mut self.buf, v);
            }
        }
        self
    }

    /// A socket address: unquoted in text (as the log shows a displayed value), a string
    /// in JSON. An address has no character that needs escaping.
    pub fn addr(&mut self, key: &str, v: std::net::SocketAddr) -> &mut Self {
        self.key(key);
        if self.json {
            self.buf.push('"');
        }
        match v {
            std::net::SocketAddr::V4(a) => {
                for (i, o) in a.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        self.buf.push('.');
                    }
                    push_padded(&mut self.buf, u64::from(o), 1);
                }
                self.buf.push(':');
                push_padded(&mut self.buf, u64::from(a.port()), 1);
            }
            std::net::SocketAddr::V6(a) => {
                let _ = write!(self.buf, "{a}");
            }
        }
        if self.json {
            self.buf.push('"');
        }
        self
    }

    /// A number field; left out when `None`.
    pub fn num(&mut self, key: &str, v: Option<u64>) -> &mut Self {
        if let Some(v) = v {
            self.key(key);
            push_padded(&mut self.buf, v, 1);
        }
        self
    }

    pub fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.key(key);
        self.buf.push_str(if v { "true" } else { "false" });
        self
    }

    /// Ends the line and hands it to the log's writer.
    pub fn write(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        if self.fallback {
            tracing::info!(target: "certgate::access", "{buf}");
        } else {
            if self.json {
                buf.push_str(",\"target\":");
                json_str(&mut buf, ACCESS_TARGET);
                buf.push('}');
            }
            buf.push('\n');
            super::sink::push(buf.as_bytes());
        }
        // Give the allocation back for the next line on this thread (a huge one is let go).
        if buf.capacity() <= 16 * 1024 {
            SCRATCH.with(|s| s.borrow_mut().buf = buf);
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time in seconds.
fn second_stamp(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The two-digit decimal numbers `00` to `99`, one after the other.
static PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Appends `v` in decimal, zero-padded to at least `width` digits (at most 20).
fn push_padded(out: &mut String, mut v: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    while v >= 100 {
        let r = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[r..r + 2]);
    }
    if v >= 10 {
        let r = v as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[r..r + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + v as u8;
    }
    // The padding is the zeros the buffer starts with.
    let from = i.min(digits.len().saturating_sub(width));
    for &d in &digits[from..] {
        out.push(char::from(d));
    }
}

/// Bytes written as they are inside a quoted string: in the text log printable ASCII
/// but `"` and `\\`; in JSON everything but control characters, `"` and `\\`.
static PLAIN_TEXT: [bool; 256] = plain_table(false);
static PLAIN_JSON: [bool; 256] = plain_table(true);

const fn plain_table(json: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 256 {
        t[b] = b != b'"' as usize && b != b'\\' as usize && (json || b < 0x7f);
        b += 1;
    }
    t
}

/// `v` quoted as Rust's `Debug` quotes a string in the text log: `"` and `\` escaped, and
/// every control character written as an escape.
fn debug_str(out: &mut String, v: &str) {
    out.push('"');
    if v.bytes().all(|b| PLAIN_TEXT[usize::from(b)]) {
        out.push_str(v);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, c) in v.char_indices() {
        let esc: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\0' => Some("\\0"),
            c if c.is_control() => None,
            _ => continue,
        };
        out.push_str(&v[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
        start = i + c.len_utf8();
    }
    out.push_str(&v[start..]);
    out.push('"');
}

/// `v` as a JSON string.
fn json_str(out: &mut String, v: &str) {
    out.push('"');
    if v.bytes().all(|b| PLAIN_JSON[usize::from(b)]) {
        out.push_str(v);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in v.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&v[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&v[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_like_debug_and_json() {
        let v = "a\"b\\c\nd\te\u{1b}[31m\u{7f}\u{8}\u{c}é";
        let mut t = String::new();
        debug_str(&mut t, v);
        assert_eq!(t, format!("{v:?}"));
        let mut j = String::new();
        json_str(&mut j, v);
        assert_eq!(j, serde_json::to_string(v).unwrap());
        let back: String = serde_json::from_str(&j).unwrap();
        assert_eq!(back, v);
        for plain in ["", "/app/orders", "Mozilla/5.0 (X11; Linux x86_64)", "é"] {
            let (mut t, mut j) = (String::new(), String::new());
            debug_str(&mut t, plain);
            json_str(&mut j, plain);
            assert_eq!(t, format!("{plain:?}"));
            assert_eq!(j, serde_json::to_string(plain).unwrap());
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for a in [
            "127.0.0.1:443",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:8443",
            "[fe80::1%3]:1",
        ] {
            let v: std::net::SocketAddr = a.parse().unwrap();
            for json in [false, true] {
                let mut l = AccessLine {
                    buf: String::new(),
                    json,
                    fallback: false,
                };
                l.addr("peer", v);
                let want = if json {
                    format!(
                        ",\"peer\":{}",
                        serde_json::to_string(&v.to_string()).unwrap()
                    )
                } else {
                    format!(" peer={v}")
                };
                assert_eq!(l.buf, want);
            }
        }
    }

    #[test]
    fn numbers_and_timestamps() {
        let mut s = String::new();
        push_padded(&mut s, 0, 1);
        s.push(' ');
        push_padded(&mut s, 42, 6);
        s.push(' ');
        push_padded(&mut s, u64::MAX, 1);
        assert_eq!(s, format!("0 000042 {}", u64::MAX));
        assert_eq!(second_stamp(0), "1970-01-01T00:00:00");
        assert_eq!(second_stamp(1_796_676_035), "2026-12-07T20:40:35");
    }
}
