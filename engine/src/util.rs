//! Small helpers: random ids, times, query strings, atomic file writes.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};

/// `n` random bytes from the kernel, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !ok {
        // Fall back to time and pid (only if /dev/urandom is unreadable).
        let t = Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = ((t >> ((i % 8) * 8)) as u8) ^ (std::process::id() as u8).wrapping_add(i as u8);
        }
    }
    hex::encode(buf)
}

/// RFC 3339 with nanoseconds, UTC ("2024-01-02T03:04:05.123456789Z").
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The current time as [`rfc3339`].
pub fn now() -> String {
    rfc3339(Utc::now())
}

/// Go's zero time as Docker prints it.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A protobuf timestamp as UTC time.
pub fn from_proto_ts(ts: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    ts.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .unwrap_or_else(Utc::now)
}

/// Decodes `%XX` escapes (and `+` as space when `plus` is set).
pub fn percent_decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A parsed query string (last value wins).
#[derive(Debug, Default, Clone)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    /// Parses `a=1&b=x%20y`.
    pub fn parse(q: Option<&str>) -> Query {
        let mut m = HashMap::new();
        if let Some(q) = q {
            for part in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = part.split_once('=').unwrap_or((part, ""));
                m.insert(percent_decode(k, true), percent_decode(v, true));
            }
        }
        Query(m)
    }

    /// A value, if present.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.as_str())
    }

    /// A boolean the way Docker reads them ("1", "true", "True" are true).
    pub fn bool(&self, k: &str) -> bool {
        matches!(
            self.get(k).map(|s| s.to_ascii_lowercase()),
            Some(ref v) if v == "1" || v == "true"
        )
    }
}

/// Writes a file atomically (temp file in the same dir, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
        random_hex(4)
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Docker's `units.HumanDuration`.
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs < 1 {
        return "Less than a second".into();
    }
    if secs == 1 {
        return "1 second".into();
    }
    if secs < 60 {
        return format!("{secs} seconds");
    }
    let mins = d.num_minutes();
    if mins == 1 {
        return "About a minute".into();
    }
    if mins < 60 {
        return format!("{mins} minutes");
    }
    let hours = (d.num_seconds() as f64 / 3600.0).round() as i64;
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
    format!("{} years", hours / 24 / 365)
}

#[rustfmt::skip]
const ADJECTIVES: &[&str] = &[
    "admiring", "agile", "amazing", "artful", "blissful", "bold", "brave", "bright", "busy",
    "calm", "careful", "charming", "cheerful", "clever", "cool", "curious", "daring", "dazzling",
    "determined", "diligent", "dreamy", "eager", "earnest", "elegant", "epic", "fearless",
    "festive", "fond", "focused", "friendly", "funny", "gallant", "gentle", "gifted", "glad",
    "graceful", "happy", "hardy", "hopeful", "humble", "jolly", "jovial", "keen", "kind", "lively",
    "loving", "lucid", "merry", "mellow", "modest", "musing", "nifty", "noble", "patient",
    "peaceful", "playful", "plucky", "polite", "proud", "quick", "quiet", "quirky", "radiant",
    "relaxed", "sharp", "serene", "sincere", "sleepy", "snappy", "spirited", "steady", "stoic",
    "sunny", "swift", "tender", "thirsty", "tidy", "upbeat", "vibrant", "vigilant", "warm", "wise",
    "witty", "wizardly", "youthful", "zealous", "zen",
];
#[rustfmt::skip]
const NAMES: &[&str] = &[
    "agnesi", "archimedes", "babbage", "banach", "bardeen", "bartik", "bell", "bohr", "boole",
    "borg", "bose", "brahmagupta", "cantor", "carson", "cauchy", "cerf", "chandrasekhar", "clarke",
    "conway", "copernicus", "curie", "darwin", "dijkstra", "dirac", "easley", "einstein",
    "engelbart", "euclid", "euler", "faraday", "fermat", "fermi", "feynman", "franklin", "gauss",
    "galileo", "goldberg", "goodall", "hamilton", "hawking", "heisenberg", "hilbert", "hodgkin",
    "hopper", "hoover", "hubble", "hypatia", "jackson", "johnson", "kalam", "kepler", "knuth",
    "kowalevski", "lamarr", "lamport", "leakey", "lovelace", "lumiere", "maxwell", "mccarthy",
    "meitner", "mendel", "mirzakhani", "morse", "napier", "newton", "nobel", "noether", "pare",
    "pascal", "pasteur", "planck", "poincare", "ramanujan", "ride", "ritchie", "sagan", "shannon",
    "sinoussi", "stallman", "swartz", "tesla", "thompson", "torvalds", "turing", "volta", "wiles",
    "wilson", "wozniak", "wright", "yonath",
];

/// A random Docker-style name ("brave_turing"); a `retry` above 0 appends a
/// random digit ("brave_turing7"), as dockerd's generator does once the
/// plain name is taken.
pub fn random_name(retry: u32) -> String {
    let r = random_hex(4);
    let v = u32::from_str_radix(&r, 16).unwrap_or(0) as usize;
    let mut name = format!(
        "{}_{}",
        ADJECTIVES[v % ADJECTIVES.len()],
        NAMES[(v / ADJECTIVES.len()) % NAMES.len()]
    );
    if retry > 0 {
        name.push(char::from(
            b'0' + ((v / ADJECTIVES.len() / NAMES.len()) % 10) as u8,
        ));
    }
    name
}

/// The strings of a JSON array (`rootfs.diff_ids`, a docker-archive's `Layers`, ...);
/// anything else gives an empty list.
pub fn json_strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Raises the soft limit of open files to the hard limit, as Go programs (dockerd,
/// containerd) do at start-up: every running container holds a few descriptors in the
/// daemon (FIFOs, shim connections), more than a default soft limit of 1024 allows
/// with a few hundred containers. Returns the new soft limit.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_soft_limit_is_raised_to_the_hard_one() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(512), hard).unwrap();
        assert_eq!(raise_open_files_limit().unwrap(), hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }

    #[test]
    fn decodes_queries() {
        let q = Query::parse(Some(
            "fromImage=127.0.0.1%3A5000%2Flibrary%2Fbusybox&tag=latest&x=1",
        ));
        assert_eq!(q.get("fromImage"), Some("127.0.0.1:5000/library/busybox"));
        assert!(q.bool("x"));
        assert!(!q.bool("y"));
        assert_eq!(percent_decode("a%2", false), "a%2");
    }

    #[test]
    fn random_names_have_dockers_shape() {
        let plain = random_name(0);
        let (adj, who) = plain.split_once('_').unwrap();
        assert!(ADJECTIVES.contains(&adj) && NAMES.contains(&who), "{plain}");
        let retried = random_name(1);
        let digit = retried.chars().last().unwrap();
        assert!(digit.is_ascii_digit(), "{retried}");
        assert!(NAMES.contains(&retried.split_once('_').unwrap().1.trim_end_matches(digit)));
    }
}
