//! The framing of the serve protocol: encoders are pure functions appending to a buffer, and
//! decoders read one value from any [`AsyncRead`] (no process, no socket: tests use
//! `tokio::io::duplex`).
//!
//! Every number is a u64 in little-endian order. A string is its length as a number, its bytes,
//! then zero bytes up to the next multiple of 8. A list (or set) of strings is a count followed
//! by the strings.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::ServeError;
use crate::parse::stderr::strip_ansi;

/// The first number a client sends (`SERVE_MAGIC_1` in Nix).
pub const SERVE_MAGIC_1: u64 = 0x390c_9deb;
/// The number the server answers with (`SERVE_MAGIC_2` in Nix).
pub const SERVE_MAGIC_2: u64 = 0x5452_eecb;
/// The protocol version this client speaks: 2.7, as in Nix 2.8 (major in the high byte).
pub const SERVE_PROTOCOL_VERSION: u64 = 0x207;
/// `cmdQueryValidPaths`: lock, substitute, paths → the valid subset.
pub const CMD_QUERY_VALID_PATHS: u64 = 1;
/// `cmdImportPaths`: an export stream → `1`.
pub const CMD_IMPORT_PATHS: u64 = 4;
/// `cmdQueryPathInfos`: path infos of the valid ones among a set of paths.
pub const CMD_QUERY_PATH_INFOS: u64 = 2;
/// `cmdExportPaths`: `0` and paths → an export stream of them, references first.
pub const CMD_EXPORT_PATHS: u64 = 5;
/// `cmdBuildPaths`: `drv!out,…` strings and build settings → `0`, or status and message.
pub const CMD_BUILD_PATHS: u64 = 6;
/// `cmdQueryClosure`: includeOutputs and paths → their closure.
pub const CMD_QUERY_CLOSURE: u64 = 7;
/// `cmdBuildDerivation`: a derivation path, a [`BasicDerivation`] and build settings → a
/// [`BuildResult`].
pub const CMD_BUILD_DERIVATION: u64 = 8;
/// `cmdAddToStoreNar` (from 2.5): a [`NarInfo`], then exactly `narSize` bytes of NAR → `1`.
pub const CMD_ADD_TO_STORE_NAR: u64 = 9;
/// The first minor version whose server reads `cmdAddToStoreNar`.
pub const ADD_TO_STORE_NAR_MINOR: u64 = 5;
/// The longest string accepted from a server (a build failure message can quote a log tail).
pub const MAX_STRING_LEN: u64 = 16 << 20;
/// The longest list accepted from a server.
pub const MAX_LIST_LEN: u64 = 1 << 20;
/// The most bytes the strings of one list may add up to. Without it, a list of
/// [`MAX_LIST_LEN`] strings of [`MAX_STRING_LEN`] bytes each (16 TiB) would be kept in memory as
/// it arrives; 64 MiB is more than 500,000 store paths, far beyond any closure.
pub const MAX_LIST_BYTES: u64 = 64 << 20;

/// Limits a build started through the serve protocol; zero means "no limit" for each field.
///
/// The other settings of the protocol are fixed: `buildRepeat` is always 0 (1 means "build
/// twice", which fails on chroot stores, see `nix-lab.md` §5), and so are
/// `enforceDeterminism` and `keepFailed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BuildSettings {
    /// Seconds without output before the build is stopped (`maxSilentTime`).
    pub max_silent_time: u64,
    /// Seconds before the build is stopped (`buildTimeout`).
    pub build_timeout: u64,
    /// Bytes of log before the build is stopped (`maxLogSize`).
    pub max_log_size: u64,
}

/// Returns how many zero bytes follow a string of `len` bytes.
pub fn padding(len: u64) -> usize {
    // Always < 8, so the cast cannot truncate.
    ((8 - len % 8) % 8) as usize
}

/// Appends a number.
pub fn put_u64(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(&n.to_le_bytes());
}

/// Appends a string (any bytes): length, bytes, padding.
pub fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len() as u64;
    put_u64(buf, len);
    buf.extend_from_slice(bytes);
    buf.resize(buf.len() + padding(len), 0);
}

/// Appends a list of strings: count, then each string.
pub fn put_strings<S: AsRef<str>>(buf: &mut Vec<u8>, items: &[S]) {
    put_u64(buf, items.len() as u64);
    for item in items {
        put_bytes(buf, item.as_ref().as_bytes());
    }
}

/// Returns the minor part of a protocol version (`0x207` → 7).
pub fn minor(version: u64) -> u64 {
    version & 0xff
}

/// Returns the major part of a protocol version, still shifted (`0x207` → `0x200`).
pub fn major(version: u64) -> u64 {
    version & 0xff00
}

/// Encodes `cmdBuildPaths` for a server speaking `server_version`: the paths (`drv!out,dev`
/// builds those outputs of a derivation), then the build settings a server of that version
/// reads (`maxLogSize` from 2.2, `buildRepeat` and `enforceDeterminism` from 2.3, `keepFailed`
/// from 2.7), as Nix's own client does.
pub fn encode_build_paths<S: AsRef<str>>(
    paths: &[S],
    settings: &BuildSettings,
    server_version: u64,
) -> Vec<u8> {
    let mut buf = Vec::new();
    put_u64(&mut buf, CMD_BUILD_PATHS);
    put_strings(&mut buf, paths);
    put_build_settings(&mut buf, settings, server_version);
    buf
}

/// Appends the build settings a server of `server_version` reads after a build command
/// (`maxLogSize` from 2.2, `buildRepeat` and `enforceDeterminism` from 2.3, `keepFailed` from
/// 2.7), as Nix's own client does.
fn put_build_settings(buf: &mut Vec<u8>, settings: &BuildSettings, server_version: u64) {
    let minor = minor(server_version);
    put_u64(buf, settings.max_silent_time);
    put_u64(buf, settings.build_timeout);
    if minor >= 2 {
        put_u64(buf, settings.max_log_size);
    }
    if minor >= 3 {
        put_u64(buf, 0); // buildRepeat: must stay 0
        put_u64(buf, 0); // enforceDeterminism
    }
    if minor >= 7 {
        put_u64(buf, 0); // keepFailed
    }
}

/// Encodes `cmdQueryValidPaths`. With `lock`, the server holds a temporary GC root for each
/// path for as long as it runs; with `substitute`, it first tries to substitute missing paths.
pub fn encode_query_valid_paths<S: AsRef<str>>(
    paths: &[S],
    lock: bool,
    substitute: bool,
) -> Vec<u8> {
    let mut buf = Vec::new();
    put_u64(&mut buf, CMD_QUERY_VALID_PATHS);
    put_u64(&mut buf, u64::from(lock));
    put_u64(&mut buf, u64::from(substitute));
    put_strings(&mut buf, paths);
    buf
}

/// Encodes `cmdQueryClosure`: the closure of `paths`, with the outputs of the derivations in it
/// when `include_outputs`.
pub fn encode_query_closure<S: AsRef<str>>(paths: &[S], include_outputs: bool) -> Vec<u8> {
    let mut buf = Vec::new();
    put_u64(&mut buf, CMD_QUERY_CLOSURE);
    put_u64(&mut buf, u64::from(include_outputs));
    put_strings(&mut buf, paths);
    buf
}

/// Encodes `cmdQueryPathInfos` of `paths`.
pub fn encode_query_path_infos<S: AsRef<str>>(paths: &[S]) -> Vec<u8> {
    let mut buf = Vec::new();
    put_u64(&mut buf, CMD_QUERY_PATH_INFOS);
    put_strings(&mut buf, paths);
    buf
}

/// What `cmdQueryPathInfos` says of one valid path (the fields reconix reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedPathInfo {
    /// The store path.
    pub path: String,
    /// The store paths it refers to.
    pub references: Vec<String>,
    /// The size of its NAR serialisation in bytes.
    pub nar_size: u64,
}

/// Reads the reply to `cmdQueryPathInfos` of `asked` paths, as a server sends it to this
/// client (version [`SERVE_PROTOCOL_VERSION`]): one entry per valid path (path, deriver,
/// references, download size, NAR size, NAR hash, content address and signatures), ended by
/// an empty path. A server that sends more entries than paths were asked for is refused.
///
/// # Errors
/// As [`read_strings`], and [`ServeError::TooLong`] for too many entries.
pub async fn read_path_infos<R: AsyncRead + Unpin>(
    reader: &mut R,
    asked: usize,
) -> Result<Vec<ServedPathInfo>, ServeError> {
    let mut infos = Vec::new();
    loop {
        let path = read_string(reader).await?;
        if path.is_empty() {
            return Ok(infos);
        }
        if infos.len() >= asked {
            return Err(ServeError::TooLong {
                what: "list",
                len: infos.len() as u64 + 1,
            });
        }
        let _deriver = read_string(reader).await?;
        let references = read_strings(reader).await?;
        let _download_size = read_u64(reader).await?;
        let nar_size = read_u64(reader).await?;
        // Sent to clients of minor version 4 and later, as this one is (Nix goes by the
        // client's version, not its own).
        let _nar_hash = read_string(reader).await?;
        let _ca = read_string(reader).await?;
        let _sigs = read_strings(reader).await?;
        infos.push(ServedPathInfo {
            path,
            references,
            nar_size,
        });
    }
}

/// Encodes `cmdExportPaths` (the `0` is an obsolete flag, "sign").
pub fn encode_export_paths<S: AsRef<str>>(paths: &[S]) -> Vec<u8> {
    let mut buf = Vec::new();
    put_u64(&mut buf, CMD_EXPORT_PATHS);
    put_u64(&mut buf, 0);
    put_strings(&mut buf, paths);
    buf
}

/// What `cmdAddToStoreNar` says about the path whose NAR follows it (`ValidPathInfo` in Nix,
/// as `nix path-info --json` prints it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NarInfo {
    /// The store path.
    pub path: String,
    /// The derivation that produced it, or empty.
    pub deriver: String,
    /// The SHA-256 of its NAR, in any form Nix parses (`sha256-<base64>`,
    /// `sha256:<base32>`…); the server checks it.
    pub nar_hash: String,
    /// Its references (store paths, possibly itself).
    pub references: Vec<String>,
    /// When it was registered (seconds since the epoch).
    pub registration_time: u64,
    /// The size of its NAR in bytes, exactly what follows the command; never 0.
    pub nar_size: u64,
    /// Whether it was built locally (`ultimate`).
    pub ultimate: bool,
    /// Its signatures.
    pub sigs: Vec<String>,
    /// Its content address, or empty.
    pub ca: String,
}

/// Encodes `cmdAddToStoreNar` up to the NAR, which the caller sends next: path, deriver,
/// narHash, references, registrationTime, narSize, ultimate, signatures, content address.
pub fn encode_add_to_store_nar(info: &NarInfo) -> Vec<u8> {
    let mut buf = Vec::new();
    put_u64(&mut buf, CMD_ADD_TO_STORE_NAR);
    put_bytes(&mut buf, info.path.as_bytes());
    put_bytes(&mut buf, info.deriver.as_bytes());
    put_bytes(&mut buf, info.nar_hash.as_bytes());
    put_strings(&mut buf, &info.references);
    put_u64(&mut buf, info.registration_time);
    put_u64(&mut buf, info.nar_size);
    put_u64(&mut buf, u64::from(info.ultimate));
    put_strings(&mut buf, &info.sigs);
    put_bytes(&mut buf, info.ca.as_bytes());
    buf
}

/// One output of a [`BasicDerivation`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DerivationOutput {
    /// The output name, e.g. `out`.
    pub name: String,
    /// Its store path (empty for a floating content-addressed output).
    pub path: String,
    /// For a fixed-output derivation, the method and algorithm (`r:sha256`), else empty.
    pub hash_algo: String,
    /// For a fixed-output derivation, the expected hash in base 16, else empty.
    pub hash: String,
}

/// A derivation without its input derivations, as `cmdBuildDerivation` takes it: the server
/// builds it from `input_srcs` alone, which must therefore hold the whole input closure
/// (sources and the outputs of input derivations), as Nix's `build-remote` sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BasicDerivation {
    /// The outputs, in name order.
    pub outputs: Vec<DerivationOutput>,
    /// Store paths that must be valid on the server before it builds.
    pub input_srcs: Vec<String>,
    /// The system, e.g. `x86_64-linux`.
    pub platform: String,
    /// The builder program.
    pub builder: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment, in key order.
    pub env: Vec<(String, String)>,
}

/// Encodes `cmdBuildDerivation` for a server speaking `server_version`.
pub fn encode_build_derivation(
    drv_path: &str,
    drv: &BasicDerivation,
    settings: &BuildSettings,
    server_version: u64,
) -> Vec<u8> {
    let mut buf = Vec::new();
    put_u64(&mut buf, CMD_BUILD_DERIVATION);
    put_bytes(&mut buf, drv_path.as_bytes());
    put_u64(&mut buf, drv.outputs.len() as u64);
    for output in &drv.outputs {
        for field in [&output.name, &output.path, &output.hash_algo, &output.hash] {
            put_bytes(&mut buf, field.as_bytes());
        }
    }
    put_strings(&mut buf, &drv.input_srcs);
    put_bytes(&mut buf, drv.platform.as_bytes());
    put_bytes(&mut buf, drv.builder.as_bytes());
    put_strings(&mut buf, &drv.args);
    put_u64(&mut buf, drv.env.len() as u64);
    for (key, value) in &drv.env {
        put_bytes(&mut buf, key.as_bytes());
        put_bytes(&mut buf, value.as_bytes());
    }
    put_build_settings(&mut buf, settings, server_version);
    buf
}

/// The status of a Nix `BuildResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BuildResultStatus {
    /// Built now.
    Built,
    /// Substituted from a cache.
    Substituted,
    /// Valid already; nothing was done.
    AlreadyValid,
    /// The builder failed.
    PermanentFailure,
    /// An input was rejected.
    InputRejected,
    /// An output was rejected (e.g. a hash mismatch).
    OutputRejected,
    /// A failure that may go away on retry.
    TransientFailure,
    /// Failed before, and failures are cached.
    CachedFailure,
    /// `buildTimeout` or `maxSilentTime` was exceeded.
    TimedOut,
    /// Any other failure.
    MiscFailure,
    /// A dependency failed.
    DependencyFailed,
    /// `maxLogSize` was exceeded.
    LogLimitExceeded,
    /// Repeated builds differed.
    NotDeterministic,
    /// A status this client does not know.
    Unknown(u64),
}

impl BuildResultStatus {
    /// Returns the status for its number on the wire.
    pub fn from_code(code: u64) -> Self {
        match code {
            0 => Self::Built,
            1 => Self::Substituted,
            2 => Self::AlreadyValid,
            3 => Self::PermanentFailure,
            4 => Self::InputRejected,
            5 => Self::OutputRejected,
            6 => Self::TransientFailure,
            7 => Self::CachedFailure,
            8 => Self::TimedOut,
            9 => Self::MiscFailure,
            10 => Self::DependencyFailed,
            11 => Self::LogLimitExceeded,
            12 => Self::NotDeterministic,
            other => Self::Unknown(other),
        }
    }

    /// Returns true when the outputs are valid (built, substituted or already there).
    pub fn is_success(self) -> bool {
        matches!(self, Self::Built | Self::Substituted | Self::AlreadyValid)
    }

    /// Returns true when a retry (here or on another builder) may succeed: Nix marks
    /// [`TransientFailure`](Self::TransientFailure) as such itself, and
    /// [`MiscFailure`](Self::MiscFailure) is its catch-all for failures that are not the
    /// builder program's (store or disk trouble, a lost substituter, a system feature or
    /// platform the builder lacks), which say nothing about the derivation. Every other
    /// failure is the derivation's own (it fails the same way again), a success, or unknown.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::TransientFailure | Self::MiscFailure)
    }
}

/// The reply to `cmdBuildDerivation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    /// What happened.
    pub status: BuildResultStatus,
    /// Nix's message when it failed (ANSI colour codes removed), else empty.
    pub error_msg: String,
    /// How many times the derivation was built (0 when nothing was built).
    pub times_built: u64,
    /// Whether repeated builds differed.
    pub is_non_deterministic: bool,
    /// When the build started, in seconds since the epoch (0 when it did not).
    pub start_time: u64,
    /// When the build stopped, in seconds since the epoch.
    pub stop_time: u64,
    /// Realisations of the built outputs, `"sha256:<hash>!out"` → Realisation JSON.
    pub built_outputs: Vec<(String, String)>,
}

/// Reads the reply to `cmdBuildDerivation` from a server speaking `server_version`: the times
/// come from servers ≥ 2.3, and the built outputs from servers ≥ 2.6 (Nix 2.8 sends them to
/// every client whatever its version, a bug this client meets by always claiming 2.7).
///
/// # Errors
/// As [`read_strings`].
pub async fn read_build_result<R: AsyncRead + Unpin>(
    reader: &mut R,
    server_version: u64,
) -> Result<BuildResult, ServeError> {
    let status = BuildResultStatus::from_code(read_u64(reader).await?);
    let error_msg = strip_ansi(&String::from_utf8_lossy(&read_bytes(reader).await?));
    let mut result = BuildResult {
        status,
        error_msg,
        times_built: 0,
        is_non_deterministic: false,
        start_time: 0,
        stop_time: 0,
        built_outputs: Vec::new(),
    };
    if minor(server_version) >= 3 {
        result.times_built = read_u64(reader).await?;
        result.is_non_deterministic = read_u64(reader).await? != 0;
        result.start_time = read_u64(reader).await?;
        result.stop_time = read_u64(reader).await?;
    }
    if minor(server_version) >= 6 {
        let count = read_u64(reader).await?;
        if count > MAX_LIST_LEN {
            return Err(ServeError::TooLong {
                what: "list",
                len: count,
            });
        }
        let mut budget = ListBudget::new(MAX_LIST_BYTES);
        for _ in 0..count {
            let id = budget.take(read_string(reader).await?)?;
            let realisation = budget.take(read_string(reader).await?)?;
            result.built_outputs.push((id, realisation));
        }
    }
    Ok(result)
}

/// Reads a number.
///
/// # Errors
/// [`ServeError::Closed`] at end of stream, [`ServeError::Io`] on a read error.
pub async fn read_u64<R: AsyncRead + Unpin>(reader: &mut R) -> Result<u64, ServeError> {
    let mut bytes = [0u8; 8];
    reader.read_exact(&mut bytes).await.map_err(read_error)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Reads a string as bytes, refusing one longer than [`MAX_STRING_LEN`].
///
/// # Errors
/// As [`read_u64`], and [`ServeError::TooLong`].
pub async fn read_bytes<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, ServeError> {
    let len = read_u64(reader).await?;
    if len > MAX_STRING_LEN {
        return Err(ServeError::TooLong {
            what: "string",
            len,
        });
    }
    // Bounded by MAX_STRING_LEN above, so it fits in usize.
    let mut bytes = vec![0u8; len as usize + padding(len)];
    reader.read_exact(&mut bytes).await.map_err(read_error)?;
    bytes.truncate(len as usize);
    Ok(bytes)
}

/// Reads a string that must be UTF-8 (a store path).
///
/// # Errors
/// As [`read_bytes`], and [`ServeError::NotUtf8`].
pub async fn read_string<R: AsyncRead + Unpin>(reader: &mut R) -> Result<String, ServeError> {
    String::from_utf8(read_bytes(reader).await?).map_err(|_| ServeError::NotUtf8)
}

/// Reads a list of UTF-8 strings, refusing more than [`MAX_LIST_LEN`] of them or more than
/// [`MAX_LIST_BYTES`] in all.
///
/// # Errors
/// As [`read_string`], and [`ServeError::TooLong`].
pub async fn read_strings<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<String>, ServeError> {
    read_strings_within(reader, MAX_LIST_BYTES).await
}

async fn read_strings_within<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_bytes: u64,
) -> Result<Vec<String>, ServeError> {
    let count = read_u64(reader).await?;
    if count > MAX_LIST_LEN {
        return Err(ServeError::TooLong {
            what: "list",
            len: count,
        });
    }
    let mut budget = ListBudget::new(max_bytes);
    let mut items = Vec::new();
    for _ in 0..count {
        items.push(budget.take(read_string(reader).await?)?);
    }
    Ok(items)
}

/// Counts the bytes of a list's strings as they are read, against a total.
struct ListBudget {
    left: u64,
    max: u64,
}

impl ListBudget {
    fn new(max: u64) -> Self {
        Self { left: max, max }
    }

    /// Passes `item` through, or refuses it once the list's strings add up to more than the
    /// total. Each string is bounded by [`MAX_STRING_LEN`] before it is read, so at most that
    /// much beyond the total is ever held.
    fn take(&mut self, item: String) -> Result<String, ServeError> {
        match self.left.checked_sub(item.len() as u64) {
            Some(left) => {
                self.left = left;
                Ok(item)
            }
            None => Err(ServeError::TooLong {
                what: "list (in bytes)",
                len: self.max - self.left + item.len() as u64,
            }),
        }
    }
}

fn read_error(source: std::io::Error) -> ServeError {
    if source.kind() == std::io::ErrorKind::UnexpectedEof {
        ServeError::Closed
    } else {
        ServeError::Io(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_bytes_should_pad_to_a_multiple_of_eight() {
        let mut buf = Vec::new();
        put_bytes(&mut buf, b"abc");
        assert_eq!(
            buf,
            [3, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0, 0]
        );
        let mut buf = Vec::new();
        put_bytes(&mut buf, b"12345678");
        assert_eq!(buf.len(), 16, "no padding after exactly 8 bytes");
        let mut buf = Vec::new();
        put_bytes(&mut buf, b"");
        assert_eq!(buf, [0; 8]);
    }

    #[test]
    fn encode_add_to_store_nar_should_send_the_path_info_in_nix_order() {
        let info = NarInfo {
            path: "/nix/store/p".into(),
            deriver: "/nix/store/d.drv".into(),
            nar_hash: "sha256-x".into(),
            references: vec!["/nix/store/r".into()],
            registration_time: 7,
            nar_size: 1024,
            ultimate: true,
            sigs: vec![],
            ca: String::new(),
        };
        let mut expected = Vec::new();
        put_u64(&mut expected, 9);
        put_bytes(&mut expected, b"/nix/store/p");
        put_bytes(&mut expected, b"/nix/store/d.drv");
        put_bytes(&mut expected, b"sha256-x");
        put_strings(&mut expected, &["/nix/store/r"]);
        for n in [7, 1024, 1, 0] {
            put_u64(&mut expected, n);
        }
        put_bytes(&mut expected, b"");
        assert_eq!(encode_add_to_store_nar(&info), expected);
    }

    #[test]
    fn padding_should_round_up_to_eight() {
        let pads: Vec<usize> = (0..10).map(padding).collect();
        assert_eq!(pads, [0, 7, 6, 5, 4, 3, 2, 1, 0, 7]);
    }

    fn words(buf: &[u8]) -> Vec<u64> {
        buf.chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn encode_build_paths_should_send_every_setting_a_2_7_server_reads_with_build_repeat_zero() {
        let settings = BuildSettings {
            max_silent_time: 5,
            build_timeout: 60,
            max_log_size: 1000,
        };
        let buf = encode_build_paths(&["/nix/store/x.drv!out"], &settings, 0x207);
        let w = words(&buf);
        // command, count, string length, 3 words of "/nix/store/x.drv!out" (20 bytes + 4 pad)
        assert_eq!(&w[..3], [6, 1, 20]);
        assert_eq!(&buf[24..44], b"/nix/store/x.drv!out");
        assert_eq!(&w[6..], [5, 60, 1000, 0, 0, 0]);
    }

    #[test]
    fn encode_build_paths_should_send_only_what_an_older_server_reads() {
        let settings = BuildSettings {
            max_silent_time: 1,
            build_timeout: 2,
            max_log_size: 3,
        };
        let sizes: Vec<usize> = [0x200, 0x202, 0x203, 0x206, 0x207]
            .iter()
            .map(|&v| words(&encode_build_paths::<&str>(&[], &settings, v)).len())
            .collect();
        assert_eq!(sizes, [4, 5, 7, 7, 8]);
    }

    #[test]
    fn encode_query_valid_paths_should_send_flags_then_paths() {
        let buf = encode_query_valid_paths(&["/nix/store/a", "/nix/store/bb"], true, false);
        let w = words(&buf);
        assert_eq!(&w[..4], [1, 1, 0, 2]);
        assert_eq!(w[4], 12);
        assert_eq!(&buf[40..52], b"/nix/store/a");
        assert_eq!(w[7], 13);
    }

    #[test]
    fn versions_should_split_into_major_and_minor() {
        assert_eq!((major(0x207), minor(0x207)), (0x200, 7));
        assert_eq!((major(0x10b), minor(0x10b)), (0x100, 11));
    }

    #[tokio::test]
    async fn encode_build_derivation_should_send_the_derivation_then_the_settings() {
        let drv = BasicDerivation {
            outputs: vec![DerivationOutput {
                name: "out".into(),
                path: "/nix/store/o".into(),
                ..DerivationOutput::default()
            }],
            input_srcs: vec!["/nix/store/i".into()],
            platform: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            args: vec!["-c".into(), "true".into()],
            env: vec![("out".into(), "/nix/store/o".into())],
        };
        let settings = BuildSettings {
            build_timeout: 2,
            ..BuildSettings::default()
        };
        let buf = encode_build_derivation("/nix/store/d.drv", &drv, &settings, 0x207);
        let mut r = buf.as_slice();
        assert_eq!(read_u64(&mut r).await.unwrap(), CMD_BUILD_DERIVATION);
        assert_eq!(read_string(&mut r).await.unwrap(), "/nix/store/d.drv");
        assert_eq!(read_u64(&mut r).await.unwrap(), 1);
        let mut output = Vec::new();
        for _ in 0..4 {
            output.push(read_string(&mut r).await.unwrap());
        }
        assert_eq!(output, ["out", "/nix/store/o", "", ""]);
        assert_eq!(read_strings(&mut r).await.unwrap(), ["/nix/store/i"]);
        assert_eq!(read_string(&mut r).await.unwrap(), "x86_64-linux");
        assert_eq!(read_string(&mut r).await.unwrap(), "/bin/sh");
        assert_eq!(read_strings(&mut r).await.unwrap(), ["-c", "true"]);
        assert_eq!(read_u64(&mut r).await.unwrap(), 1);
        assert_eq!(read_string(&mut r).await.unwrap(), "out");
        assert_eq!(read_string(&mut r).await.unwrap(), "/nix/store/o");
        assert_eq!(words(r), [0, 2, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn read_path_infos_should_read_each_valid_path_up_to_the_empty_one() {
        let mut reply = Vec::new();
        for (path, refs, size) in [
            ("/nix/store/a", vec!["/nix/store/a"], 120),
            ("/nix/store/b", vec![], 7),
        ] {
            put_bytes(&mut reply, path.as_bytes());
            put_bytes(&mut reply, b"/nix/store/x.drv");
            put_strings(&mut reply, &refs);
            put_u64(&mut reply, size);
            put_u64(&mut reply, size);
            put_bytes(&mut reply, b"sha256:0000");
            put_bytes(&mut reply, b"");
            put_strings(&mut reply, &["cache-1:sig"]);
        }
        put_bytes(&mut reply, b"");
        reply.extend_from_slice(b"next");
        let mut r = reply.as_slice();
        let infos = read_path_infos(&mut r, 3).await.unwrap();
        assert_eq!(
            infos,
            [
                ServedPathInfo {
                    path: "/nix/store/a".into(),
                    references: vec!["/nix/store/a".into()],
                    nar_size: 120
                },
                ServedPathInfo {
                    path: "/nix/store/b".into(),
                    references: vec![],
                    nar_size: 7
                },
            ]
        );
        assert_eq!(r, b"next");
        // More entries than paths asked for: refused.
        let err = read_path_infos(&mut reply.as_slice(), 1).await.unwrap_err();
        assert!(matches!(err, ServeError::TooLong { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn read_build_result_should_read_what_the_server_version_sends() {
        let mut full = Vec::new();
        put_u64(&mut full, 8);
        put_bytes(
            &mut full,
            b"\x1b[31;1merror:\x1b[0m timed out after 2 seconds",
        );
        for word in [1, 0, 100, 102, 1] {
            put_u64(&mut full, word);
        }
        put_bytes(&mut full, b"sha256:abc!out");
        put_bytes(&mut full, b"{}");
        let result = read_build_result(&mut full.as_slice(), 0x207)
            .await
            .unwrap();
        assert_eq!(result.status, BuildResultStatus::TimedOut);
        assert_eq!(result.error_msg, "error: timed out after 2 seconds");
        assert_eq!(
            (result.times_built, result.start_time, result.stop_time),
            (1, 100, 102)
        );
        assert_eq!(
            result.built_outputs,
            [("sha256:abc!out".into(), "{}".into())]
        );
        // A 2.2 server sends the status and the message only.
        let mut short = Vec::new();
        put_u64(&mut short, 0);
        put_bytes(&mut short, b"");
        let mut reader = short.as_slice();
        let result = read_build_result(&mut reader, 0x202).await.unwrap();
        assert!(result.status.is_success());
        assert!(reader.is_empty());
        assert_eq!(
            BuildResultStatus::from_code(42),
            BuildResultStatus::Unknown(42)
        );
    }

    #[test]
    fn is_transient_should_hold_for_transient_and_misc_failures_only() {
        let transient: Vec<u64> = (0..=13)
            .filter(|&c| BuildResultStatus::from_code(c).is_transient())
            .collect();
        assert_eq!(transient, [6, 9]);
    }

    #[tokio::test]
    async fn decoders_should_read_back_what_encoders_wrote() {
        let mut buf = Vec::new();
        put_u64(&mut buf, 0xdead_beef);
        put_bytes(&mut buf, b"\xff\x00binary");
        put_strings(&mut buf, &["a", "bcdefghij", ""]);
        let mut reader = buf.as_slice();
        assert_eq!(read_u64(&mut reader).await.unwrap(), 0xdead_beef);
        assert_eq!(read_bytes(&mut reader).await.unwrap(), b"\xff\x00binary");
        assert_eq!(
            read_strings(&mut reader).await.unwrap(),
            ["a", "bcdefghij", ""]
        );
        assert!(reader.is_empty());
        assert!(matches!(
            read_u64(&mut reader).await,
            Err(ServeError::Closed)
        ));
    }

    #[tokio::test]
    async fn read_strings_should_refuse_a_list_whose_strings_add_up_to_more_than_the_total() {
        let mut buf = Vec::new();
        put_strings(&mut buf, &["a".repeat(40), "b".repeat(40), "c".repeat(40)]);
        let items = read_strings_within(&mut buf.as_slice(), 120).await.unwrap();
        assert_eq!(items.len(), 3, "exactly the total is accepted");
        assert!(matches!(
            read_strings_within(&mut buf.as_slice(), 119).await,
            Err(ServeError::TooLong { len: 120, .. })
        ));
        // The build result's realisations count against the same kind of total.
        let mut reply = Vec::new();
        put_u64(&mut reply, 0);
        put_bytes(&mut reply, b"");
        for word in [1, 0, 0, 0, 3] {
            put_u64(&mut reply, word);
        }
        // Four strings of the longest kind are exactly the total; the fifth is refused.
        let big = vec![b'x'; MAX_STRING_LEN as usize];
        for _ in 0..5 {
            put_bytes(&mut reply, &big);
        }
        assert!(matches!(
            read_build_result(&mut reply.as_slice(), 0x207).await,
            Err(ServeError::TooLong { .. })
        ));
    }

    #[tokio::test]
    async fn decoders_should_refuse_oversized_or_truncated_or_non_utf8_input() {
        let mut buf = Vec::new();
        put_u64(&mut buf, MAX_STRING_LEN + 1);
        assert!(matches!(
            read_bytes(&mut buf.as_slice()).await,
            Err(ServeError::TooLong { what: "string", .. })
        ));
        let mut buf = Vec::new();
        put_u64(&mut buf, MAX_LIST_LEN + 1);
        assert!(matches!(
            read_strings(&mut buf.as_slice()).await,
            Err(ServeError::TooLong { what: "list", .. })
        ));
        let mut buf = Vec::new();
        put_bytes(&mut buf, b"abcdef");
        buf.truncate(12); // the string is cut short
        assert!(matches!(
            read_bytes(&mut buf.as_slice()).await,
            Err(ServeError::Closed)
        ));
        let mut buf = Vec::new();
        put_bytes(&mut buf, b"\xff");
        assert!(matches!(
            read_string(&mut buf.as_slice()).await,
            Err(ServeError::NotUtf8)
        ));
    }
}
