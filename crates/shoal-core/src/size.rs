//! Human sizes and rates in configuration: `20GiB`, `512MB`, `100MiB/s`.
//!
//! Binary units (KiB, MiB, GiB, TiB, and bare K/M/G/T) are powers of 1024; decimal units
//! (kB, MB, GB, TB) are powers of 1000. Case is ignored except for the `i`.

/// Why a size or rate does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a size such as 512MiB, 20GiB or 1000000 (a rate takes /s: 100MiB/s)")]
pub struct SizeError(pub String);

/// Parses a byte size.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let err = || SizeError(s.to_owned());
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(err()),
    };
    if num.is_empty() {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

/// Parses a rate in bytes per second (`100MiB/s`); the `/s` is required.
pub fn parse_rate(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let size = t.strip_suffix("/s").ok_or_else(|| SizeError(s.to_owned()))?;
    parse_size(size).map_err(|_| SizeError(s.to_owned()))
}

/// Formats bytes with a binary unit, e.g. `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("20 gib"), Ok(20 << 30));
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_rate("100MiB/s"), Ok(100 << 20));
        for bad in ["", "GiB", "12XB", "-1G", "1e400", "1.2.3M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_rate("100MiB").is_err());
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(12), "12 B");
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,20}") {
            let _ = parse_size(&s);
            let _ = parse_rate(&s);
        }
    }
}
