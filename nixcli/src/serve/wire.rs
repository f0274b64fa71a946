//! The framing of the serve protocol: encoders are pure functions appending to a buffer, and
//! decoders read one value from any [`AsyncRead`] (no process, no socket: tests use
//! `tokio::io::duplex`).
//!
//! Every number is a u64 in little-endian order. A string is its length as a number, its bytes,
//! then zero bytes up to the next multiple of 8. A list (or set) of strings is a count followed
//! by the strings.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::ServeError;

/// The first number a client sends (`SERVE_MAGIC_1` in Nix).
pub const SERVE_MAGIC_1: u64 = 0x390c_9deb;
/// The number the server answers with (`SERVE_MAGIC_2` in Nix).
pub const SERVE_MAGIC_2: u64 = 0x5452_eecb;
/// The protocol version this client speaks: 2.7, as in Nix 2.8 (major in the high byte).
pub const SERVE_PROTOCOL_VERSION: u64 = 0x207;
/// `cmdQueryValidPaths`: lock, substitute, paths → the valid subset.
pub const CMD_QUERY_VALID_PATHS: u64 = 1;
/// `cmdBuildPaths`: `drv!out,…` strings and build settings → `0`, or status and message.
pub const CMD_BUILD_PATHS: u64 = 6;
/// The longest string accepted from a server (a build failure message can quote a log tail).
pub const MAX_STRING_LEN: u64 = 16 << 20;
/// The longest list accepted from a server.
pub const MAX_LIST_LEN: u64 = 1 << 20;

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
    let minor = minor(server_version);
    let mut buf = Vec::new();
    put_u64(&mut buf, CMD_BUILD_PATHS);
    put_strings(&mut buf, paths);
    put_u64(&mut buf, settings.max_silent_time);
    put_u64(&mut buf, settings.build_timeout);
    if minor >= 2 {
        put_u64(&mut buf, settings.max_log_size);
    }
    if minor >= 3 {
        put_u64(&mut buf, 0); // buildRepeat: must stay 0
        put_u64(&mut buf, 0); // enforceDeterminism
    }
    if minor >= 7 {
        put_u64(&mut buf, 0); // keepFailed
    }
    buf
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

/// Reads a list of UTF-8 strings, refusing more than [`MAX_LIST_LEN`] of them.
///
/// # Errors
/// As [`read_string`], and [`ServeError::TooLong`].
pub async fn read_strings<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<String>, ServeError> {
    let count = read_u64(reader).await?;
    if count > MAX_LIST_LEN {
        return Err(ServeError::TooLong {
            what: "list",
            len: count,
        });
    }
    let mut items = Vec::new();
    for _ in 0..count {
        items.push(read_string(reader).await?);
    }
    Ok(items)
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
