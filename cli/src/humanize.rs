//! Sizes and durations printed the way docker (go-units) prints them:
//! "4.26MB", "1.5MiB", "2 minutes ago", and parsing of `-m 64m`.

use std::time::Duration;

const DECIMAL_UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
const BINARY_UNITS: [&str; 9] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];

/// Go's `%.{precision}g`: shortest of %e/%f with `precision` significant
/// digits, trailing zeros removed.
pub fn format_g(x: f64, precision: usize) -> String {
    if x == 0.0 {
        return "0".into();
    }
    if !x.is_finite() {
        return x.to_string();
    }
    let p = precision.max(1);
    // Exponent after rounding to p significant digits.
    let sci = format!("{:.*e}", p - 1, x);
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if exp < -4 || exp >= p as i32 {
        let mant = trim_zeros(mant);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        trim_zeros(&format!("{x:.decimals$}")).to_string()
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

fn scaled(size: f64, base: f64, units: &[&'static str]) -> (f64, &'static str) {
    let mut size = size;
    let mut i = 0;
    while size >= base && i < units.len() - 1 {
        size /= base;
        i += 1;
    }
    (size, units[i])
}

/// go-units `HumanSizeWithPrecision(size, 3)`: decimal units, as in the
/// SIZE column of `docker images` ("4.26MB").
pub fn human_size(bytes: f64) -> String {
    let (v, u) = scaled(bytes, 1000.0, &DECIMAL_UNITS);
    format!("{}{u}", format_g(v, 3))
}

/// go-units `BytesSize`: binary units with 4 significant digits, as in
/// `docker stats` ("1.523MiB").
pub fn bytes_size(bytes: f64) -> String {
    let (v, u) = scaled(bytes, 1024.0, &BINARY_UNITS);
    format!("{}{u}", format_g(v, 4))
}

/// go-units `HumanDuration`.
pub fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 1 {
        return "Less than a second".into();
    }
    if seconds == 1 {
        return "1 second".into();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    let minutes = seconds / 60;
    if minutes == 1 {
        return "About a minute".into();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", seconds / 3600 / 24 / 365)
}

/// "2 minutes ago" for a unix timestamp, relative to `now` (unix seconds).
pub fn ago(created_unix: i64, now_unix: i64) -> String {
    let d = (now_unix - created_unix).max(0) as u64;
    format!("{} ago", human_duration(Duration::from_secs(d)))
}

/// go-units `RAMInBytes`: "64m", "1.5g", "512k", "1024", "2GiB" → bytes
/// (binary multiples, as `docker run -m`).
pub fn parse_ram_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, rest) = t.split_at(num_end);
    let value: f64 = num.parse().map_err(|_| format!("invalid size: '{s}'"))?;
    let suffix = rest.trim_start_matches(' ').to_ascii_lowercase();
    let unit = suffix
        .trim_end_matches('b')
        .trim_end_matches('i')
        .to_string();
    if suffix.len() > 3
        || !(suffix.is_empty()
            || suffix == "b"
            || matches!(suffix.len(), 1..=3)
                && suffix.chars().next().is_some_and(|c| "kmgtp".contains(c)))
    {
        return Err(format!("invalid size: '{s}'"));
    }
    let mult: f64 = match unit.as_str() {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return Err(format!("invalid size: '{s}'")),
    };
    Ok((value * mult) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_go_units() {
        assert_eq!(human_size(4_261_000.0), "4.26MB");
        assert_eq!(human_size(4_264_999.0), "4.26MB");
        assert_eq!(human_size(0.0), "0B");
        assert_eq!(human_size(100.0), "100B");
        assert_eq!(human_size(1000.0), "1kB");
        assert_eq!(human_size(12_345.0), "12.3kB");
        assert_eq!(human_size(1_500_000_000.0), "1.5GB");
        assert_eq!(human_size(999_999.0), "1e+03kB"); // go-units does this too
        assert_eq!(bytes_size(1024.0 * 1024.0 * 1.5), "1.5MiB");
        assert_eq!(bytes_size(123.0), "123B");
        assert_eq!(bytes_size(7.5 * 1024.0 * 1024.0 * 1024.0), "7.5GiB");
    }

    #[test]
    fn format_g_matches_go() {
        assert_eq!(format_g(4.2619, 3), "4.26");
        assert_eq!(format_g(0.00001234, 3), "1.23e-05");
        assert_eq!(format_g(12.0, 3), "12");
        assert_eq!(format_g(123.456, 4), "123.5");
    }

    #[test]
    fn durations_match_go_units() {
        let s = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(42)), "42 seconds");
        assert_eq!(human_duration(s(60)), "About a minute");
        assert_eq!(human_duration(s(125)), "2 minutes");
        assert_eq!(human_duration(s(3600)), "About an hour");
        assert_eq!(human_duration(s(5 * 3600)), "5 hours");
        assert_eq!(human_duration(s(3 * 86400)), "3 days");
        assert_eq!(human_duration(s(20 * 86400)), "2 weeks");
        assert_eq!(human_duration(s(90 * 86400)), "3 months");
        assert_eq!(human_duration(s(800 * 86400)), "2 years");
        assert_eq!(ago(1000, 1125), "2 minutes ago");
    }

    #[test]
    fn ram_sizes_parse_like_docker() {
        assert_eq!(parse_ram_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_ram_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_ram_bytes("512k").unwrap(), 512 << 10);
        assert_eq!(parse_ram_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_ram_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_ram_bytes("1.5m").unwrap(), 3 << 19);
        assert!(parse_ram_bytes("lots").is_err());
        assert!(parse_ram_bytes("5x").is_err());
    }
}
