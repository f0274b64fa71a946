//! Validated names shared by every crate: store paths, attribute paths, systems, repo keys.
//!
//! Each newtype validates in `new` and in `Deserialize`, so a value that exists is a valid one
//! (the attic `CacheName` pattern). They carry no IO.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// Describes why a string is not a valid name of some kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} `{value}`: {reason}")]
pub struct NameError {
    /// What was being parsed ("store path", "system", …).
    pub kind: &'static str,
    /// The rejected input.
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

fn name_error(kind: &'static str, value: &str, reason: &'static str) -> NameError {
    NameError {
        kind,
        value: value.to_owned(),
        reason,
    }
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $check:path) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` and wraps it.
            ///
            /// # Errors
            /// Returns a [`NameError`] saying why `value` is not acceptable.
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                $check(&value)?;
                Ok(Self(value))
            }

            /// Returns the name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Returns the owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The Nix store directory every store path lives in.
pub const STORE_DIR: &str = "/nix/store/";

fn check_store_path(s: &str) -> Result<(), NameError> {
    const KIND: &str = "store path";
    let Some(base) = s.strip_prefix(STORE_DIR) else {
        return Err(name_error(KIND, s, "must start with /nix/store/"));
    };
    let (hash, name) = base.split_at_checked(32).unwrap_or((base, ""));
    if hash.len() != 32 || !hash.bytes().all(is_nix_base32) {
        return Err(name_error(KIND, s, "must have a 32-character base32 hash"));
    }
    let Some(name) = name.strip_prefix('-') else {
        return Err(name_error(KIND, s, "hash must be followed by `-name`"));
    };
    if name.is_empty() || name.len() > 211 {
        return Err(name_error(KIND, s, "name must be 1 to 211 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
    {
        return Err(name_error(KIND, s, "name has a character Nix forbids"));
    }
    Ok(())
}

fn is_nix_base32(b: u8) -> bool {
    // Nix's base32 alphabet omits e, o, u and t.
    matches!(b, b'0'..=b'9' | b'a'..=b'd' | b'f'..=b'n' | b'p'..=b's' | b'v'..=b'z')
}

string_newtype!(
    /// An absolute path in the Nix store, e.g. `/nix/store/<hash>-hello-2.12`.
    StorePath,
    check_store_path
);

impl StorePath {
    /// Returns true when this path names a derivation (`.drv`).
    pub fn is_derivation(&self) -> bool {
        self.0.ends_with(".drv")
    }

    /// Returns the 32-character hash part.
    pub fn hash_part(&self) -> &str {
        self.0
            .get(STORE_DIR.len()..STORE_DIR.len() + 32)
            .unwrap_or("")
    }

    /// Returns the name after the hash, e.g. `hello-2.12.drv`.
    pub fn name(&self) -> &str {
        self.0.get(STORE_DIR.len() + 33..).unwrap_or("")
    }
}

fn check_system(s: &str) -> Result<(), NameError> {
    const KIND: &str = "system";
    let mut parts = s.splitn(2, '-');
    let (arch, os) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok(arch)
        || os.is_empty()
        || !os
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(name_error(KIND, s, "must look like `x86_64-linux`"));
    }
    Ok(())
}

string_newtype!(
    /// A Nix system double such as `x86_64-linux` or `aarch64-darwin`.
    System,
    check_system
);

fn check_attr_path(s: &str) -> Result<(), NameError> {
    parse_attr_path(s).map(|_| ())
}

/// Nix's keywords: a name spelled like one is quoted, as Nix prints it.
const NIX_KEYWORDS: [&str; 10] = [
    "if", "then", "else", "assert", "with", "let", "in", "rec", "inherit", "or",
];

/// Returns true when Nix prints `name` bare in an attribute path: a Nix identifier
/// (`[A-Za-z_][A-Za-z0-9_'-]*`) that is not a keyword.
fn is_bare_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_'-".contains(&b))
        && !NIX_KEYWORDS.contains(&name)
}

/// Appends `name` to `out` as Nix prints an attribute name: bare when it is an identifier, else
/// as a Nix string (`"foo/bar"`, with `\"`, `\\`, `\n`, `\r`, `\t` and `\${` escaped).
fn push_name(out: &mut String, name: &str) {
    if is_bare_name(name) {
        out.push_str(name);
        return;
    }
    out.push_str(&nix_string(name));
}

/// Returns `s` as a double-quoted Nix string, with `\"`, `\\`, `\n`, `\r`, `\t` and `\${` escaped.
pub(crate) fn nix_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Splits a printed attribute path into its names (the inverse of [`push_name`] joined by `.`).
fn parse_attr_path(s: &str) -> Result<Vec<String>, NameError> {
    const KIND: &str = "attribute path";
    let mut names = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut name = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(name_error(KIND, s, "has an unterminated quoted name")),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => name.push('\n'),
                        Some('r') => name.push('\r'),
                        Some('t') => name.push('\t'),
                        Some(c) => name.push(c),
                        None => {
                            return Err(name_error(KIND, s, "has an unterminated quoted name"));
                        }
                    },
                    Some(c) => name.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' || c == '/' || c.is_control() || c.is_whitespace() {
                    return Err(name_error(
                        KIND,
                        s,
                        "a name with `\"`, `/`, spaces or control characters must be quoted",
                    ));
                }
                name.push(c);
                chars.next();
            }
            if name.is_empty() {
                return Err(name_error(KIND, s, "must be dot-separated non-empty names"));
            }
        }
        names.push(name);
        match chars.next() {
            None => return Ok(names),
            Some('.') => {}
            Some(_) => {
                return Err(name_error(
                    KIND,
                    s,
                    "a quoted name must be followed by `.` or the end",
                ));
            }
        }
    }
}

impl System {
    /// Returns `x86_64-linux`, the default system of repos and builders.
    pub fn x86_64_linux() -> Self {
        Self("x86_64-linux".to_owned())
    }
}

string_newtype!(
    /// A full flake attribute path of a job, written as Nix prints it:
    /// `packages.x86_64-linux.hello`, `hydraJobs.tests."foo/bar".x86_64-linux`.
    ///
    /// A name that is not a Nix identifier (it contains `.`, `/`, spaces…, starts with a digit or
    /// is a keyword) is quoted as a Nix string, so every list of names has exactly one spelling
    /// ([`AttrPath::from_names`]) and the spelling gives the names back ([`AttrPath::names`]).
    /// Spellings that quote an identifier needlessly are accepted too.
    AttrPath,
    check_attr_path
);

impl AttrPath {
    /// Returns the path of `names` as Nix prints it (see the type's docs).
    ///
    /// # Errors
    /// Returns a [`NameError`] when `names` is empty.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, NameError> {
        if names.is_empty() {
            return Err(name_error(
                "attribute path",
                "",
                "must have at least one name",
            ));
        }
        let mut out = String::new();
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            push_name(&mut out, name.as_ref());
        }
        Ok(Self(out))
    }

    /// Returns the path of the single attribute `name`, as Nix prints it.
    pub fn from_name(name: &str) -> Self {
        let mut out = String::new();
        push_name(&mut out, name);
        Self(out)
    }

    /// Returns the attribute names of the path, unquoted.
    pub fn names(&self) -> Vec<String> {
        // A value exists only once validated, so parsing again cannot fail.
        parse_attr_path(&self.0).unwrap_or_default()
    }

    /// Returns the path as the fragment of a flake reference (`<flake>#<fragment>`): Nix 2.8
    /// reads the fragment's quoted names and percent-decodes it, so bytes a URL fragment may
    /// not hold (`%`, `#`, `{`, non-ASCII, …) are percent-encoded.
    pub fn to_flake_fragment(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/? \"^".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
}

fn check_ident(kind: &'static str, s: &str, allow_slash: bool) -> Result<(), NameError> {
    if s.is_empty() || s.len() > 200 {
        return Err(name_error(kind, s, "must be 1 to 200 characters"));
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b) || (allow_slash && b == b'/'));
    if !ok {
        return Err(name_error(
            kind,
            s,
            "may contain only letters, digits, `-`, `_`, `.` (and `/` in repo names)",
        ));
    }
    if s.starts_with(['.', '/', '-']) || s.ends_with('/') || s.contains("//") || s.contains("..") {
        return Err(name_error(
            kind,
            s,
            "must not start with `.`, `/` or `-`, end with `/`, or contain `//` or `..`",
        ));
    }
    Ok(())
}

fn check_forge_name(s: &str) -> Result<(), NameError> {
    check_ident("forge name", s, false)
}

fn check_repo_name(s: &str) -> Result<(), NameError> {
    check_ident("repo name", s, true)
}

fn check_builder_name(s: &str) -> Result<(), NameError> {
    check_ident("builder name", s, false)
}

string_newtype!(
    /// The name of a forge entry in the spec (`forges.<name>`).
    ForgeName,
    check_forge_name
);

string_newtype!(
    /// A repository's name within its forge: `owner/name` (nested groups allowed) or a bare name
    /// for `local` forges.
    RepoName,
    check_repo_name
);

string_newtype!(
    /// The name of a builder: `local` or a named remote builder.
    BuilderName,
    check_builder_name
);

impl BuilderName {
    /// The name reserved for the daemon's own machine, the builder of `builders.local`.
    pub const LOCAL: &str = "local";

    /// Returns the name of the local builder, `local`.
    pub fn local() -> Self {
        Self(Self::LOCAL.to_owned())
    }

    /// Returns true when this is the local builder's name.
    pub fn is_local(&self) -> bool {
        self.0 == Self::LOCAL
    }
}

/// Identifies one repository across the whole spec: forge name plus repo name.
///
/// Displayed and parsed as `<forge>/<repo>`, e.g. `gh/NixOS/nixpkgs`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoKey {
    /// The forge entry this repo belongs to.
    pub forge: ForgeName,
    /// The repository within that forge.
    pub repo: RepoName,
}

impl RepoKey {
    /// Creates a key from its two parts.
    pub fn new(forge: ForgeName, repo: RepoName) -> Self {
        Self { forge, repo }
    }

    /// Parses `<forge>/<repo>`.
    ///
    /// # Errors
    /// Returns a [`NameError`] when there is no `/` or either part is invalid.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let (forge, repo) = s
            .split_once('/')
            .ok_or_else(|| name_error("repo reference", s, "must be `<forge>/<repo>`"))?;
        Ok(Self {
            forge: ForgeName::new(forge)?,
            repo: RepoName::new(repo)?,
        })
    }
}

impl fmt::Display for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.forge, self.repo)
    }
}

impl Serialize for RepoKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for RepoKey {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RepoKey".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A repository reference `<forge>/<repo>`: a forge name from `forges`, then a repo name in it.",
            "pattern": "^[^/]+/.+$",
        })
    }
}

impl<'de> Deserialize<'de> for RepoKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A point in time as milliseconds since the Unix epoch (UTC).
///
/// `plan` functions take `now: Timestamp` as an argument so they stay pure; only the runtime reads
/// the clock.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Returns the current wall-clock time.
    pub fn now() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self(ms)
    }

    /// Returns this time moved forward by `d` (saturating).
    #[must_use]
    pub fn plus(self, d: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// Returns how long after `earlier` this time is (zero when it is not later).
    pub fn since(self, earlier: Self) -> std::time::Duration {
        std::time::Duration::from_millis(
            u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRV: &str = "/nix/store/6clhlkasp2y6ip8sja1pp0xxb60ypsy5-install-nix-smoke-test.drv";

    #[test]
    fn store_path_should_accept_a_real_path_and_split_it() {
        let p = StorePath::new(DRV).unwrap();
        assert!(p.is_derivation());
        assert_eq!(p.hash_part(), "6clhlkasp2y6ip8sja1pp0xxb60ypsy5");
        assert_eq!(p.name(), "install-nix-smoke-test.drv");
    }

    #[test]
    fn store_path_should_reject_bad_hashes_and_names() {
        for bad in [
            "/tmp/x",
            "/nix/store/short-x",
            "/nix/store/6clhlkasp2y6ip8sja1pp0xxb60ypsye-x", // `e` is not base32
            "/nix/store/6clhlkasp2y6ip8sja1pp0xxb60ypsy5",
            "/nix/store/6clhlkasp2y6ip8sja1pp0xxb60ypsy5-",
            "/nix/store/6clhlkasp2y6ip8sja1pp0xxb60ypsy5-a b",
        ] {
            assert!(StorePath::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn system_should_accept_doubles_only() {
        assert!(System::new("x86_64-linux").is_ok());
        assert!(System::new("aarch64-darwin").is_ok());
        for bad in ["", "linux", "-linux", "x86_64-", "x 86-linux"] {
            assert!(System::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn repo_key_should_round_trip_through_display_and_parse() {
        let k = RepoKey::parse("gh/NixOS/nixpkgs").unwrap();
        assert_eq!(k.forge.as_str(), "gh");
        assert_eq!(k.repo.as_str(), "NixOS/nixpkgs");
        assert_eq!(k.to_string(), "gh/NixOS/nixpkgs");
        assert!(RepoKey::parse("nogroup").is_err());
        assert!(RepoName::new("../etc").is_err());
        assert!(RepoName::new("a//b").is_err());
    }

    #[test]
    fn attr_path_should_reject_empty_segments() {
        assert!(AttrPath::new("packages.x86_64-linux.hello").is_ok());
        assert!(AttrPath::new("packages..hello").is_err());
        assert!(AttrPath::new("").is_err());
    }

    #[test]
    fn attr_path_should_quote_names_as_nix_prints_them() {
        let path =
            AttrPath::from_names(&["hydraJobs", "tests", "foo/bar", "x86_64-linux"]).unwrap();
        assert_eq!(path.as_str(), r#"hydraJobs.tests."foo/bar".x86_64-linux"#);
        let odd = [
            "a.b",
            "with space",
            "7zip",
            "or",
            "",
            "q\"u\\o${x}\n",
            "it's",
            "_ok-1'",
        ];
        let path = AttrPath::from_names(&odd).unwrap();
        assert_eq!(
            path.as_str(),
            r#""a.b"."with space"."7zip"."or".""."q\"u\\o\${x}\n".it's._ok-1'"#
        );
        assert_eq!(path.names(), odd);
        assert_eq!(AttrPath::new(path.as_str()).unwrap(), path);
        assert!(AttrPath::from_names::<&str>(&[]).is_err());
    }

    #[test]
    fn attr_path_should_refuse_unquoted_slashes_and_stray_quotes() {
        assert!(AttrPath::new("packages.x86_64-linux.a/b").is_err());
        assert!(AttrPath::new("a.\"b").is_err());
        assert!(AttrPath::new("a.\"b\"c").is_err());
        assert!(AttrPath::new("a b").is_err());
        assert_eq!(AttrPath::new("a.\"b\".c").unwrap().names(), ["a", "b", "c"]);
    }

    #[test]
    fn attr_path_should_percent_encode_what_a_flake_fragment_cannot_hold() {
        let path = AttrPath::from_names(&["hydraJobs", "p%q", "h#r", "x/y z", "é"]).unwrap();
        assert_eq!(
            path.to_flake_fragment(),
            r#"hydraJobs."p%25q"."h%23r"."x/y z"."%C3%A9""#
        );
    }
}
