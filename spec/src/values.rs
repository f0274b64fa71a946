//! Value types that appear inside the spec: human-readable durations and byte sizes, and
//! references to secret files.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Describes why a string is not a valid duration or byte size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} `{value}`: {reason}")]
pub struct ValueError {
    /// What was being parsed ("duration", "byte size").
    pub kind: &'static str,
    /// The rejected input.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

/// A span of time written the humantime way: `30s`, `12h`, `30 days`, `1 hour 30 min`.
///
/// It serialises back to a compact humantime string (`30days`, `1h 30m`) that parses to the same
/// value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// Returns a duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// Returns a duration of `days` days of 24 hours.
    pub const fn from_days(days: u64) -> Self {
        Self::from_secs(days * 24 * 60 * 60)
    }

    /// Returns the wrapped standard-library duration.
    pub const fn to_std(self) -> std::time::Duration {
        self.0
    }

    /// Returns true when the duration is zero.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        humantime::parse_duration(s.trim())
            .map(Self)
            .map_err(|e| ValueError {
                kind: "duration",
                value: s.to_owned(),
                reason: e.to_string().to_lowercase(),
            })
    }
}

impl fmt::Display for Duration {
    /// Writes the largest whole units first (`1day 2h`, `90days`, `500ms`, `0s`), which humantime
    /// parses back exactly. humantime's own formatter is avoided because it switches to months
    /// and years, which are not whole days.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        let parts = [
            (secs / 86_400, "days"),
            (secs / 3_600 % 24, "h"),
            (secs / 60 % 60, "m"),
            (secs % 60, "s"),
            (u64::from(nanos / 1_000_000), "ms"),
            (u64::from(nanos / 1_000 % 1_000), "us"),
            (u64::from(nanos % 1_000), "ns"),
        ];
        let mut first = true;
        for (n, unit) in parts {
            if n == 0 {
                continue;
            }
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            let unit = if unit == "days" && n == 1 {
                "day"
            } else {
                unit
            };
            write!(f, "{n}{unit}")?;
        }
        if first {
            f.write_str("0s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(FromStrVisitor::<Self>::new(
            "a duration such as \"30s\", \"12h\" or \"30 days\"",
        ))
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration in humantime syntax, such as `30s`, `12h`, `30 days` or `1h 30m`.",
            "examples": ["30s", "12h", "30 days"],
        })
    }
}

/// An amount of bytes written with a unit: `500MB`, `50 GiB`, `1.5 TB`, `1024`.
///
/// Units are case-insensitive: `k`, `m`, `g`, `t` (with or without a trailing `B`) are powers of
/// 1000, and `Ki`, `Mi`, `Gi`, `Ti` (with or without `B`) are powers of 1024. A bare number is
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

const BYTE_UNITS: [(&str, u64); 12] = [
    ("", 1),
    ("b", 1),
    ("k", 1_000),
    ("m", 1_000_000),
    ("g", 1_000_000_000),
    ("t", 1_000_000_000_000),
    ("p", 1_000_000_000_000_000),
    ("ki", 1 << 10),
    ("mi", 1 << 20),
    ("gi", 1 << 30),
    ("ti", 1 << 40),
    ("pi", 1 << 50),
];

fn byte_unit(unit: &str) -> Option<u64> {
    let unit = unit.to_ascii_lowercase();
    // `kb`, `mib`, … are the bare unit plus a `b`; a lone `b` is handled by the table.
    let bare = match unit.strip_suffix('b') {
        Some(bare) if !bare.is_empty() => bare,
        _ => unit.as_str(),
    };
    BYTE_UNITS
        .iter()
        .find(|(name, _)| *name == bare)
        .map(|(_, factor)| *factor)
}

impl FromStr for ByteSize {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        let err = |reason: &str| ValueError {
            kind: "byte size",
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let factor = byte_unit(unit.trim())
            .ok_or_else(|| err("unknown unit: use B, kB, MB, GB, TB or KiB, MiB, GiB, TiB"))?;
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(
                "expected a number followed by a unit, such as `50 GiB`",
            ));
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) || (number.contains('.') && frac.is_empty()) {
            return Err(err("malformed number"));
        }
        let too_large = || err("too large");
        let whole: u128 = whole.parse().map_err(|_| too_large())?;
        // Exact fixed-point arithmetic: `1.5 GiB` is 1610612736 bytes, with no float rounding.
        let frac = frac.get(..18).unwrap_or(frac);
        let numerator: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| too_large())?
        };
        let denominator = 10u128.pow(u32::try_from(frac.len()).unwrap_or(18));
        let bytes = whole
            .checked_mul(u128::from(factor))
            .ok_or_else(too_large)?
            + numerator * u128::from(factor) / denominator;
        u64::try_from(bytes).map(Self).map_err(|_| too_large())
    }
}

impl fmt::Display for ByteSize {
    /// Writes the largest binary unit that divides the size exactly (`50 GiB`), else bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, factor) in [
            ("PiB", 1u64 << 50),
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if self.0 != 0 && self.0.is_multiple_of(factor) {
                return write!(f, "{} {unit}", self.0 / factor);
            }
        }
        write!(f, "{} B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(FromStrVisitor::<Self>::new(
            "a size such as \"50 GiB\" or \"500MB\"",
        ))
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A size in bytes with a unit: kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024).",
            "examples": ["50 GiB", "500MB"],
        })
    }
}

/// Deserialises a value from a string through its `FromStr`; a bare integer is accepted as a
/// string of digits so that `max-size: 1024` works, and then fails or succeeds in `FromStr`.
struct FromStrVisitor<T> {
    expecting: &'static str,
    _marker: std::marker::PhantomData<T>,
}

impl<T> FromStrVisitor<T> {
    fn new(expecting: &'static str) -> Self {
        Self {
            expecting,
            _marker: std::marker::PhantomData,
        }
    }
}

impl<T> serde::de::Visitor<'_> for FromStrVisitor<T>
where
    T: FromStr<Err = ValueError>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

/// A path to a file holding a secret (an API token, a webhook secret, a signing key): secrets
/// never appear in the spec itself. A relative path is resolved against the spec file's
/// directory.
//
// The path is not secret, so `Debug` shows it; the contents are read only by `SecretFile::read`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct SecretFile(PathBuf);

impl SecretFile {
    /// Wraps a path.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// Returns the path of the secret file.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Reads the secret, dropping trailing whitespace (files usually end with a newline that is
    /// not part of the secret).
    ///
    /// # Errors
    /// Returns the IO error when the file cannot be read or is not UTF-8.
    pub fn read(&self) -> Result<Secret, std::io::Error> {
        let text = std::fs::read_to_string(&self.0)?;
        Ok(Secret(text.trim_end().to_owned()))
    }

    pub(crate) fn path_mut(&mut self) -> &mut PathBuf {
        &mut self.0
    }
}

/// The contents of a [`SecretFile`]. `Debug` and `Display` print `<redacted>`, so a secret
/// cannot leak into logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Returns the secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dur(s: &str) -> std::time::Duration {
        s.parse::<Duration>().unwrap().0
    }

    #[test]
    fn duration_should_parse_humantime_forms_including_spaced_days() {
        assert_eq!(dur("30s"), std::time::Duration::from_secs(30));
        assert_eq!(dur("5m"), std::time::Duration::from_secs(300));
        assert_eq!(dur("12h"), std::time::Duration::from_secs(12 * 3600));
        assert_eq!(dur("30 days"), std::time::Duration::from_secs(30 * 86_400));
        assert_eq!(dur("1 hour 30 min"), std::time::Duration::from_secs(5400));
        assert!("soon".parse::<Duration>().is_err());
        assert!("".parse::<Duration>().is_err());
    }

    #[test]
    fn duration_should_display_in_a_form_that_parses_back() {
        for (d, text) in [
            (Duration::from_days(90), "90days"),
            (Duration::from_days(1), "1day"),
            (Duration::from_secs(5400), "1h 30m"),
            (Duration::from_secs(0), "0s"),
            (Duration(std::time::Duration::from_millis(1500)), "1s 500ms"),
        ] {
            assert_eq!(d.to_string(), text);
            assert_eq!(text.parse::<Duration>().unwrap(), d);
        }
    }

    #[test]
    fn byte_size_should_parse_decimal_and_binary_units() {
        let size = |s: &str| s.parse::<ByteSize>().unwrap().0;
        assert_eq!(size("50 GiB"), 50 << 30);
        assert_eq!(size("500MB"), 500_000_000);
        assert_eq!(size("500mb"), 500_000_000);
        assert_eq!(size("1.5 GiB"), 3 << 29);
        assert_eq!(size("1024"), 1024);
        assert_eq!(size("10 B"), 10);
        assert_eq!(size("2k"), 2000);
        for bad in [
            "",
            "GiB",
            "5 parsecs",
            "1.",
            "1.2.3 GB",
            "99999999999 PiB",
            "999999999999999999999999999999999999 PiB",
        ] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn byte_size_should_display_in_a_form_that_parses_back() {
        for (text, shown) in [("50 GiB", "50 GiB"), ("500MB", "500000000 B"), ("0", "0 B")] {
            let size: ByteSize = text.parse().unwrap();
            assert_eq!(size.to_string(), shown);
            assert_eq!(shown.parse::<ByteSize>().unwrap(), size);
        }
    }

    #[test]
    fn secret_should_be_redacted_in_debug_and_display() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn secret_file_should_show_its_path_and_read_without_the_trailing_newline() {
        let path = std::env::temp_dir().join(format!("reconix-spec-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let file = SecretFile::new(&path);
        assert!(format!("{file:?}").contains("reconix-spec-secret"));
        assert_eq!(file.read().unwrap().expose(), "s3cret");
        std::fs::remove_file(&path).unwrap();
    }
}
