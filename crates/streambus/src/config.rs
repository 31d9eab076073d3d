//! Small parsers shared by the library, the CLI and the topology file.

use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// Parses a human duration: `250ms`, `5s`, `2m`, `1h`, `1d`, `1.5s`, `100us`;
/// combinations like `1m30s`; a bare number is seconds.
pub fn parse_duration(input: &str) -> Result<Duration> {
    let s = input.trim();
    let bad = |why: &str| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("invalid duration {input:?}: {why} (examples: 500ms, 5s, 2m, 1h, 1m30s)"),
        )
    };
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad("out of range"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("a number needs a unit"))?;
        if num_len == 0 {
            return Err(bad("expected a number"));
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad("bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match rest[..unit_len].trim() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hours" => 3600.0,
            "d" | "days" => 86_400.0,
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(value * scale).map_err(|_| bad("out of range"))?;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it, compactly
/// (`850ms`, `12.3s`, `4m05s`, `2h10m`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// Parses a byte size: `1048576`, `512KiB`, `1MiB`, `1MB`, `10k`.
pub fn parse_bytes(input: &str) -> Result<usize> {
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: usize = s[..split].parse().map_err(|_| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("invalid size {input:?}: expected a number of bytes such as 1048576, 512KiB or 1MiB"),
        )
    })?;
    let mult = match s[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        other => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("invalid size {input:?}: unknown unit {other:?} (use KiB, MiB or GiB)"),
            ))
        }
    };
    n.checked_mul(mult).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("size {input:?} is too large"),
        )
    })
}

/// Decodes `%XX` escapes (two hex digits, either case) in a URL's query value;
/// anything else, a `%` not followed by two hex digits included, is kept as it
/// is. Works on bytes, so no input can panic it; decoded bytes that are not
/// UTF-8 become U+FFFD. `+` is kept: for `application/x-www-form-urlencoded`
/// values, replace `+` by a space first.
///
/// The one decoder of the library (TLS settings in a Redis URL's query) and of
/// `streambus serve` (its `?token=`), so that both read a value alike.
#[doc(hidden)]
pub fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(hi), Some(lo)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push((hi << 4) | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms").unwrap(), ms(500));
        assert_eq!(parse_duration("5s").unwrap(), ms(5000));
        assert_eq!(parse_duration("2m").unwrap(), ms(120_000));
        assert_eq!(parse_duration("1h").unwrap(), ms(3_600_000));
        assert_eq!(parse_duration("1m30s").unwrap(), ms(90_000));
        assert_eq!(parse_duration("1.5s").unwrap(), ms(1500));
        assert_eq!(parse_duration("3").unwrap(), ms(3000));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "5x", "ms", "-1s", "1e400", "5 s s", "s5"] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn durations_format_and_parse_back() {
        for d in [
            Duration::from_millis(850),
            Duration::from_millis(12_300),
            Duration::from_secs(245),
            Duration::from_secs(7800),
        ] {
            let text = format_duration(d);
            let back = parse_duration(&text).unwrap();
            assert!(back.abs_diff(d) < Duration::from_secs(1), "{text}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("10").unwrap(), 10);
        assert!(parse_bytes("1XB").is_err());
        assert!(parse_bytes("").is_err());
    }
}
