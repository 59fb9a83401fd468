//! Human units in the config file: durations (`500ms`, `30s`, `5m`, `24h`, `365d`, also
//! combined like `1h30m`) and sizes (`512B`, `64KiB`, `1MiB`, `1GiB`, or a plain byte count).
//!
//! Only the parsing lives here; [`super::file`] attaches the file, line and key to the error.
//! The text of every error repeats the offending value, so an operator sees what was read.

use std::time::Duration;

/// A value that is not a valid duration or size. The message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

const DURATION_HELP: &str = "expected a duration like 500ms, 30s, 5m, 24h or 365d";
const SIZE_HELP: &str = "expected a size like 512B, 64KiB or 1MiB, or a plain number of bytes";

/// Parses a duration: one or more `<integer><unit>` parts with unit `ms`, `s`, `m`, `h` or `d`
/// (`1h30m`). A bare `0` is accepted as zero; any other number needs a unit, because `30`
/// alone could mean seconds or milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let s = text.trim();
    let bad = |why: &str| UnitError(format!("{text:?} is not a valid duration: {why}"));
    if s.is_empty() {
        return Err(bad(DURATION_HELP));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad(DURATION_HELP));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Some(Duration::from_millis(number)),
            "s" => Some(Duration::from_secs(number)),
            "m" => number.checked_mul(60).map(Duration::from_secs),
            "h" => number.checked_mul(3_600).map(Duration::from_secs),
            "d" => number.checked_mul(86_400).map(Duration::from_secs),
            "" => return Err(bad("a number needs a unit (ms, s, m, h or d)")),
            other => {
                return Err(bad(&format!(
                    "unknown unit {other:?} (use ms, s, m, h or d)"
                )));
            }
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| bad("the duration is too large"))?;
    }
    Ok(total)
}

/// Parses a size in bytes: a plain integer, or an integer with `B`, `KiB`, `MiB` or `GiB`
/// (case-insensitive, optional space). Decimal units (`KB`, `MB`) are refused with a hint,
/// because operators mean different things by them.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let s = text.trim();
    let bad = |why: &str| UnitError(format!("{text:?} is not a valid size: {why}"));
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad(SIZE_HELP));
    }
    let number: u64 = s[..digits]
        .parse()
        .map_err(|_| bad("the number is too large"))?;
    let unit = s[digits..].trim_start();
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "k" | "kb" => return Err(bad(&format!("ambiguous unit {unit:?}; write {number}KiB"))),
        "m" | "mb" => return Err(bad(&format!("ambiguous unit {unit:?}; write {number}MiB"))),
        "g" | "gb" => return Err(bad(&format!("ambiguous unit {unit:?}; write {number}GiB"))),
        _ => {
            return Err(bad(&format!(
                "unknown unit {unit:?} (use B, KiB, MiB or GiB)"
            )));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| bad("the size is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(
            parse_duration("365d"),
            Ok(Duration::from_secs(365 * 86_400))
        );
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1m500ms"), Ok(Duration::from_millis(60_500)));
    }

    #[test]
    fn bad_durations_name_the_value() {
        for bad in [
            "",
            "30",
            "abc",
            "10x",
            "s",
            "-5s",
            "1.5s",
            "10 s",
            "5M",
            "99999999999999999999s",
        ] {
            let err = parse_duration(bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        let err = parse_duration("10x").unwrap_err().to_string();
        assert!(err.contains("unknown unit \"x\""), "{err}");
        let err = parse_duration("30").unwrap_err().to_string();
        assert!(err.contains("needs a unit"), "{err}");
        assert!(parse_duration("18446744073709551615d").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1_048_576));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4_096));
        assert_eq!(parse_size("64 kib"), Ok(65_536));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_sizes_name_the_value() {
        for bad in [
            "",
            "KiB",
            "64KB",
            "1MB",
            "12XB",
            "-1",
            "1.5MiB",
            "18446744073709551615KiB",
        ] {
            let err = parse_size(bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        let err = parse_size("64KB").unwrap_err().to_string();
        assert!(err.contains("write 64KiB"), "{err}");
    }
}
