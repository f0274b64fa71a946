//! The control channel's protocol (version 1): one JSON object per line.
//!
//! The agent opens with a `hello` and then sends a `heartbeat` at a fixed interval:
//!
//! ```text
//! {"type":"hello","version":1,"name":"b1","systems":["x86_64-linux"],"features":["kvm"],"max_jobs":2,"token":null}
//! {"type":"heartbeat","running":0}
//! ```
//!
//! The coordinator answers the hello with its [`Verdict`], one line, and closes the channel
//! after a refusal:
//!
//! ```text
//! {"type":"admitted"}
//! {"type":"refused","reason":"key-revoked","message":"this agent's key was revoked"}
//! ```
//!
//! The verdict came after version 1 was released, without a version bump: both directions
//! tolerate its absence (an older coordinator sends none, an older agent ignores it), and an
//! unknown `reason` decodes as [`Refusal::Other`].
//!
//! Pure code: encoding and strict decoding (names, systems and features are validated, unknown
//! fields and oversize lines are refused), no IO.

use reconix_spec::{BuilderName, Secret, System};
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line either side accepts, newline excluded.
pub const MAX_LINE: usize = 64 * 1024;

/// The most systems or features a hello may list.
pub const MAX_LIST: usize = 64;

/// The longest enrolment token accepted, in bytes.
pub const MAX_TOKEN: usize = 4096;

/// The largest `max_jobs` accepted.
pub const MAX_JOBS: u32 = 1024;

/// Errors decoding a control line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The line is longer than [`MAX_LINE`].
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    /// The line is not a JSON object of a known type with the expected fields.
    #[error("malformed message")]
    Malformed(#[source] serde_json::Error),
    /// The hello names a protocol version this side does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u32),
    /// A field has a value that is not acceptable.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// The agent's introduction: who it is and what it can build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version, [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The builder's name (never `local`).
    pub name: BuilderName,
    /// The systems it builds for; at least one.
    pub systems: Vec<System>,
    /// The Nix system features it offers (`kvm`, `big-parallel`, …).
    pub features: Vec<String>,
    /// How many builds it runs at once (serve channels it accepts); at least 1.
    pub max_jobs: u32,
    /// The enrolment token, when the agent has one. Redacted in `Debug`.
    pub token: Option<Secret>,
}

/// One control-channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The first message on the channel.
    Hello(Hello),
    /// A liveness signal with the number of serve channels running.
    Heartbeat {
        /// Serve channels (builds) running now.
        running: u32,
    },
}

/// Why the coordinator refused an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// The agent's key was revoked: it is refused for good, whatever token comes with it.
    KeyRevoked,
    /// The agent's name was revoked: no key may use it until an operator admits it again.
    NameRevoked,
    /// The key is not enrolled under this name and the enrolment token is missing or wrong.
    BadToken,
    /// The coordinator enrols no new agents.
    EnrollmentClosed,
    /// A reason this version does not know.
    #[serde(other)]
    Other,
}

impl Refusal {
    /// Returns its wire spelling, e.g. `key-revoked`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::KeyRevoked => "key-revoked",
            Self::NameRevoked => "name-revoked",
            Self::BadToken => "bad-token",
            Self::EnrollmentClosed => "enrollment-closed",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest refusal message kept, in characters.
pub const MAX_MESSAGE: usize = 1024;

/// The coordinator's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The agent may work.
    Admitted,
    /// The agent is refused; the coordinator closes the connection.
    Refused {
        /// Why, for the agent to act on.
        reason: Refusal,
        /// Why, for people: at most [`MAX_MESSAGE`] characters, without control characters.
        message: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireVerdict {
    Admitted {},
    Refused { reason: Refusal, message: String },
}

impl Verdict {
    /// Returns a refusal, its message cleaned for logs (control characters replaced, cut to
    /// [`MAX_MESSAGE`] characters).
    pub fn refused(reason: Refusal, message: &str) -> Self {
        Self::Refused {
            reason,
            message: clean_message(message),
        }
    }

    /// Returns the verdict as one JSON line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let wire = match self {
            Self::Admitted => WireVerdict::Admitted {},
            Self::Refused { reason, message } => WireVerdict::Refused {
                reason: *reason,
                message: message.clone(),
            },
        };
        // A tag, an enum spelled as a string and a string: serialising cannot fail.
        json_line(&wire)
    }

    /// Decodes one line (with or without its trailing newline). Unknown fields are ignored,
    /// since later coordinators may say more.
    ///
    /// # Errors
    /// When the line is too long or is not a verdict.
    pub fn decode(line: &[u8]) -> Result<Self, ProtocolError> {
        Ok(
            match serde_json::from_slice(unframe(line)?).map_err(ProtocolError::Malformed)? {
                WireVerdict::Admitted {} => Self::Admitted,
                WireVerdict::Refused { reason, message } => Self::refused(reason, &message),
            },
        )
    }
}

/// Returns `wire` as one JSON line, newline included (empty, then, if it cannot be serialised,
/// which the plain wire structs rule out).
fn json_line<T: Serialize>(wire: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(wire).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Returns a received line without its trailing newline, refusing one over [`MAX_LINE`].
fn unframe(line: &[u8]) -> Result<&[u8], ProtocolError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(ProtocolError::TooLong);
    }
    Ok(line)
}

fn clean_message(message: &str) -> String {
    message
        .chars()
        .take(MAX_MESSAGE)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire {
    Hello(WireHello),
    Heartbeat(WireHeartbeat),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHello {
    version: u32,
    name: String,
    systems: Vec<String>,
    features: Vec<String>,
    max_jobs: u32,
    token: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHeartbeat {
    running: u32,
}

impl Message {
    /// Returns the message as one JSON line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let wire = match self {
            Self::Hello(h) => Wire::Hello(WireHello {
                version: h.version,
                name: h.name.to_string(),
                systems: h.systems.iter().map(ToString::to_string).collect(),
                features: h.features.clone(),
                max_jobs: h.max_jobs,
                token: h.token.as_ref().map(|t| t.expose().to_owned()),
            }),
            Self::Heartbeat { running } => Wire::Heartbeat(WireHeartbeat { running: *running }),
        };
        // Serialising these plain structs cannot fail: every key is a string and every value
        // is a number, a string or a list of strings.
        json_line(&wire)
    }

    /// Decodes one line (with or without its trailing newline) and validates it strictly.
    ///
    /// # Errors
    /// When the line is too long, is not a known message, or a field is invalid.
    pub fn decode(line: &[u8]) -> Result<Self, ProtocolError> {
        match serde_json::from_slice::<Wire>(unframe(line)?).map_err(ProtocolError::Malformed)? {
            Wire::Hello(h) => validate_hello(h).map(Self::Hello),
            Wire::Heartbeat(WireHeartbeat { running }) => Ok(Self::Heartbeat { running }),
        }
    }
}

fn validate_hello(h: WireHello) -> Result<Hello, ProtocolError> {
    if h.version != PROTOCOL_VERSION {
        return Err(ProtocolError::UnsupportedVersion(h.version));
    }
    let name = BuilderName::new(h.name).map_err(|e| invalid("name", e))?;
    if name.is_local() {
        return Err(invalid("name", "`local` is reserved for the coordinator"));
    }
    if h.systems.is_empty() || h.systems.len() > MAX_LIST {
        return Err(invalid("systems", format!("must list 1 to {MAX_LIST}")));
    }
    let mut systems = Vec::with_capacity(h.systems.len());
    for s in h.systems {
        let system = System::new(s).map_err(|e| invalid("systems", e))?;
        if systems.contains(&system) {
            return Err(invalid("systems", format!("{system} is listed twice")));
        }
        systems.push(system);
    }
    if h.features.len() > MAX_LIST {
        return Err(invalid("features", format!("must list at most {MAX_LIST}")));
    }
    for (i, f) in h.features.iter().enumerate() {
        check_feature(f).map_err(|reason| invalid("features", reason))?;
        if h.features[..i].contains(f) {
            return Err(invalid("features", format!("{f} is listed twice")));
        }
    }
    if h.max_jobs == 0 || h.max_jobs > MAX_JOBS {
        return Err(invalid("max_jobs", format!("must be 1 to {MAX_JOBS}")));
    }
    if let Some(t) = &h.token
        && (t.is_empty() || t.len() > MAX_TOKEN || t.chars().any(char::is_control))
    {
        return Err(invalid(
            "token",
            format!("must be 1 to {MAX_TOKEN} bytes without control characters"),
        ));
    }
    Ok(Hello {
        version: h.version,
        name,
        systems,
        features: h.features,
        max_jobs: h.max_jobs,
        token: h.token.map(Secret::new),
    })
}

/// Checks a Nix system feature name: 1 to 100 of letters, digits, `-`, `_`, `.`, `+`.
///
/// # Errors
/// A message saying why `feature` is not acceptable.
pub fn check_feature(feature: &str) -> Result<(), String> {
    if feature.is_empty() || feature.len() > 100 {
        return Err(format!("{feature:?} must be 1 to 100 characters"));
    }
    if !feature
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
    {
        return Err(format!(
            "{feature:?} may contain only letters, digits, `-`, `_`, `.` and `+`"
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            name: BuilderName::new("b1").unwrap(),
            systems: vec![System::x86_64_linux()],
            features: vec!["kvm".to_owned()],
            max_jobs: 2,
            token: Some(Secret::new("s3cret")),
        }
    }

    #[test]
    fn hello_should_round_trip_through_one_line() {
        let line = Message::Hello(hello()).encode();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(Message::decode(&line).unwrap(), Message::Hello(hello()));
    }

    #[test]
    fn hello_should_encode_the_documented_json() {
        let line = Message::Hello(Hello {
            token: None,
            ..hello()
        })
        .encode();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"type\":\"hello\",\"version\":1,\"name\":\"b1\",\"systems\":[\"x86_64-linux\"],\
             \"features\":[\"kvm\"],\"max_jobs\":2,\"token\":null}\n"
        );
        assert_eq!(
            Message::Heartbeat { running: 3 }.encode(),
            b"{\"type\":\"heartbeat\",\"running\":3}\n"
        );
    }

    #[test]
    fn hello_debug_should_redact_the_token() {
        assert!(!format!("{:?}", hello()).contains("s3cret"));
    }

    #[test]
    fn decode_should_refuse_garbage_and_invalid_fields() {
        let ok = r#""version":1,"name":"b1","systems":["x86_64-linux"],"features":[],"max_jobs":1,"token":null"#;
        let cases = [
            "not json".to_owned(),
            "{}".to_owned(),
            r#"{"type":"shell"}"#.to_owned(),
            format!(r#"{{"type":"hello",{ok},"extra":1}}"#),
            r#"{"type":"hello","version":1,"name":"b1"}"#.to_owned(),
            format!(
                r#"{{"type":"hello",{}}}"#,
                ok.replace("\"version\":1", "\"version\":2")
            ),
            format!(r#"{{"type":"hello",{}}}"#, ok.replace("b1", "../etc")),
            format!(r#"{{"type":"hello",{}}}"#, ok.replace("b1", "local")),
            format!(
                r#"{{"type":"hello",{}}}"#,
                ok.replace("x86_64-linux", "linux")
            ),
            format!(
                r#"{{"type":"hello",{}}}"#,
                ok.replace(r#"["x86_64-linux"]"#, "[]")
            ),
            format!(r#"{{"type":"hello",{}}}"#, ok.replace("[]", r#"["a b"]"#)),
            format!(
                r#"{{"type":"hello",{}}}"#,
                ok.replace("\"max_jobs\":1", "\"max_jobs\":0")
            ),
            format!(r#"{{"type":"hello",{}}}"#, ok.replace("null", "\"\"")),
            r#"{"type":"heartbeat","running":-1}"#.to_owned(),
        ];
        for line in cases {
            assert!(Message::decode(line.as_bytes()).is_err(), "{line} accepted");
        }
        assert!(Message::decode(format!(r#"{{"type":"hello",{ok}}}"#).as_bytes()).is_ok());
        let long = vec![b' '; MAX_LINE + 1];
        assert!(matches!(
            Message::decode(&long),
            Err(ProtocolError::TooLong)
        ));
    }

    #[test]
    fn verdicts_should_round_trip_as_the_documented_json() {
        let refused = Verdict::refused(Refusal::KeyRevoked, "this agent's key was revoked");
        let line = refused.encode();
        assert_eq!(
            String::from_utf8(line.clone()).unwrap(),
            "{\"type\":\"refused\",\"reason\":\"key-revoked\",\
             \"message\":\"this agent's key was revoked\"}\n"
        );
        assert_eq!(Verdict::decode(&line).unwrap(), refused);
        assert_eq!(Verdict::Admitted.encode(), b"{\"type\":\"admitted\"}\n");
        assert_eq!(
            Verdict::decode(b"{\"type\":\"admitted\"}").unwrap(),
            Verdict::Admitted
        );
        for reason in [
            Refusal::KeyRevoked,
            Refusal::NameRevoked,
            Refusal::BadToken,
            Refusal::EnrollmentClosed,
            Refusal::Other,
        ] {
            let line = Verdict::refused(reason, "m").encode();
            assert_eq!(
                Verdict::decode(&line).unwrap(),
                Verdict::refused(reason, "m")
            );
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }

    #[test]
    fn a_verdict_from_a_newer_coordinator_should_still_decode() {
        let line = br#"{"type":"refused","reason":"quota","message":"m","retry_after":60}"#;
        assert_eq!(
            Verdict::decode(line).unwrap(),
            Verdict::refused(Refusal::Other, "m")
        );
        assert!(Verdict::decode(br#"{"type":"hello"}"#).is_err());
        assert!(Verdict::decode(b"garbage").is_err());
    }

    #[test]
    fn a_refusal_message_should_be_cut_and_lose_control_characters() {
        let Verdict::Refused { message, .. } = Verdict::refused(
            Refusal::Other,
            &format!("a\nb\u{1b}[31m{}", "x".repeat(5000)),
        ) else {
            panic!("not a refusal");
        };
        assert!(message.starts_with("a b [31m"), "{message}");
        assert_eq!(message.chars().count(), MAX_MESSAGE);
    }
}
