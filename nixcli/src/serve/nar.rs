//! Streaming copiers for Nix archives (NAR) and `nix-store --export` streams, which validate
//! the structure as the bytes go through.
//!
//! Neither format says how long it is: a NAR ends when its root node is closed, and an export
//! stream (`1`, NAR, `0x4558494e`, path, references, deriver, `0` per path, then `0`) ends at
//! its final `0`. The serve protocol sends both without a length prefix (`cmdExportPaths`,
//! `cmdImportPaths`), so the only way to know where the next reply starts is to walk them.
//!
//! The walkers never allocate according to a length the peer announced: every string is
//! checked against a limit before it is read, and file contents are copied in fixed chunks
//! after checking the archive's total size. Directories are walked with an explicit stack, so
//! nesting is bounded by [`NarLimits::max_depth`] and not by the call stack.
//!
//! NAR grammar (every token a length-prefixed, zero-padded string, as in [`super::wire`]):
//! `"nix-archive-1" node`, where `node` is `"(" "type" ("regular" ["executable" ""]
//! ["contents" bytes] | "symlink" "target" target | "directory" ("entry" "(" "name" name "node"
//! node ")")*) ")"`; directory entries come in strictly increasing byte order.

use reconix_spec::names::StorePath;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::wire::padding;

/// The magic number after each NAR of an export stream (`"NIXE"`).
pub const EXPORT_MAGIC: u64 = 0x4558_494e;

/// The first token of every NAR.
const NAR_MAGIC: &[u8] = b"nix-archive-1";
/// The longest keyword token ("nix-archive-1" has 13 bytes).
const MAX_KEYWORD_LEN: u64 = 16;
/// Copied bytes are written out once this many are buffered.
const CHUNK: usize = 64 << 10;
/// The most bytes of file contents read (and then written) at once.
const CONTENTS_CHUNK: usize = 256 << 10;
/// The longest store path or deriver accepted in an export stream (Nix's own limit is 211
/// bytes of name plus the store directory and hash).
const MAX_PATH_LEN: u64 = 512;
/// The most references one path of an export stream may have.
const MAX_REFERENCES: u64 = 1 << 16;
/// The longest legacy signature accepted in an export stream.
const MAX_SIGNATURE_LEN: u64 = 4096;

/// Bounds on what a NAR may contain, so that a hostile or broken peer cannot make the walker
/// allocate or copy without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NarLimits {
    /// The largest NAR accepted, in bytes (framing included).
    pub max_nar_size: u64,
    /// The deepest directory nesting accepted (the root directory is depth 1).
    pub max_depth: usize,
    /// The longest directory entry name accepted, in bytes.
    pub max_name_len: u64,
    /// The longest symlink target accepted, in bytes.
    pub max_target_len: u64,
}

impl Default for NarLimits {
    /// Returns limits no sane store path reaches: 64 GiB, 1024 levels, 255-byte names (Linux's
    /// `NAME_MAX`) and 4096-byte targets (`PATH_MAX`).
    fn default() -> Self {
        Self {
            max_nar_size: 64 << 30,
            max_depth: 1024,
            max_name_len: 255,
            max_target_len: 4096,
        }
    }
}

/// Why a NAR or export stream could not be copied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NarError {
    /// The input ended in the middle of an archive or stream.
    #[error("the archive ends too early")]
    Truncated,
    /// The input could not be read.
    #[error("cannot read the archive")]
    Read(#[source] std::io::Error),
    /// The output could not be written.
    #[error("cannot write the archive")]
    Write(#[source] std::io::Error),
    /// A string is longer than accepted; it was not read.
    #[error("a {what} of {len} bytes is longer than the {max} accepted")]
    TooLong {
        /// What the string is (`name`, `target`, `keyword`, `path`…).
        what: &'static str,
        /// Its announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The archive is larger than [`NarLimits::max_nar_size`]; the excess was not read.
    #[error("the archive is larger than the {max} bytes accepted")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// Directories are nested deeper than [`NarLimits::max_depth`].
    #[error("directories are nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// The archive is shorter than announced (`cmdAddToStoreNar` sends its size first).
    #[error("the archive has {actual} bytes, not the {expected} announced")]
    WrongSize {
        /// The announced size.
        expected: u64,
        /// The archive's size.
        actual: u64,
    },
    /// A token other than the one the grammar requires.
    #[error("expected {expected}, found {found:?}")]
    Unexpected {
        /// What the grammar allows here.
        expected: &'static str,
        /// What was found (lossily decoded).
        found: String,
    },
    /// The padding after a string is not zero.
    #[error("non-zero padding")]
    Padding,
    /// A directory entry name is empty, `.`, `..`, or contains `/` or NUL.
    #[error("invalid directory entry name {name:?}")]
    BadName {
        /// The name (lossily decoded).
        name: String,
    },
    /// Directory entries are not in strictly increasing order.
    #[error("directory entry {name:?} is out of order")]
    Unsorted {
        /// The entry that came too late (lossily decoded).
        name: String,
    },
    /// A path in an export stream is not a valid store path.
    #[error("invalid store path {path:?} in the export stream")]
    BadPath {
        /// The path (lossily decoded).
        path: String,
    },
    /// An export stream holds a path its reader did not accept (one that was not asked for).
    /// Its metadata was not passed on, so the importer cannot have registered it.
    #[error("the export stream holds the unexpected path {path}")]
    UnexpectedPath {
        /// The path.
        path: StorePath,
    },
}

/// Copies one NAR from `reader` to `writer`, checking its structure against `limits`, and
/// returns its size. Reads exactly the archive: what follows it stays in `reader`.
///
/// `reader` is read in small pieces, so it should be buffered; `writer` gets the framing in
/// chunks of up to 64 KiB and file contents as they are read (at most 256 KiB at a time), and
/// is flushed at the end.
///
/// # Errors
/// When the input is not a well-formed NAR within `limits`, or either stream fails. Whatever
/// was read before the error may already have been written.
pub async fn copy_nar<R, W>(
    reader: &mut R,
    writer: &mut W,
    limits: &NarLimits,
) -> Result<u64, NarError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut tee = Tee::new(reader, writer);
    let size = tee.nar(limits).await?;
    tee.flush().await?;
    Ok(size)
}

/// Copies an export stream (as written by `nix-store --export` or `cmdExportPaths`) from
/// `reader` to `writer` and returns the paths it held, in order. Reads exactly up to the final
/// `0`.
///
/// `accept` is asked about every path before its metadata is written: when it returns false,
/// copying stops with [`NarError::UnexpectedPath`] and an importer reading `writer` only ever
/// sees that path's NAR, without the trailer that would let it register the path.
///
/// # Errors
/// As [`copy_nar`], for a malformed stream, and [`NarError::UnexpectedPath`].
pub async fn copy_export<R, W>(
    reader: &mut R,
    writer: &mut W,
    limits: &NarLimits,
    mut accept: impl FnMut(&StorePath) -> bool,
) -> Result<Vec<StorePath>, NarError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut tee = Tee::new(reader, writer);
    let mut paths = Vec::new();
    loop {
        match tee.u64().await? {
            0 => break,
            1 => {}
            other => {
                return Err(NarError::Unexpected {
                    expected: "1 (another path) or 0 (end)",
                    found: other.to_string(),
                });
            }
        }
        tee.nar(limits).await?;
        // The importer registers a path only once it has read the trailer: hold it back
        // until the path is known to be wanted.
        tee.flush().await?;
        tee.hold = true;
        let magic = tee.u64().await?;
        if magic != EXPORT_MAGIC {
            return Err(NarError::Unexpected {
                expected: "the export magic 0x4558494e",
                found: format!("{magic:#x}"),
            });
        }
        let path = store_path(tee.string(MAX_PATH_LEN, "path").await?)?;
        let references = tee.u64().await?;
        if references > MAX_REFERENCES {
            return Err(NarError::TooLong {
                what: "reference list",
                len: references,
                max: MAX_REFERENCES,
            });
        }
        for _ in 0..references {
            store_path(tee.string(MAX_PATH_LEN, "reference").await?)?;
        }
        let deriver = tee.string(MAX_PATH_LEN, "deriver").await?;
        if !deriver.is_empty() {
            store_path(deriver)?;
        }
        // A legacy signature: Nix reads one more string after a 1.
        match tee.u64().await? {
            0 => {}
            1 => {
                tee.string(MAX_SIGNATURE_LEN, "signature").await?;
            }
            other => {
                return Err(NarError::Unexpected {
                    expected: "0 or 1 (legacy signature)",
                    found: other.to_string(),
                });
            }
        }
        if !accept(&path) {
            return Err(NarError::UnexpectedPath { path });
        }
        tee.hold = false;
        paths.push(path);
    }
    tee.flush().await?;
    Ok(paths)
}

fn store_path(bytes: Vec<u8>) -> Result<StorePath, NarError> {
    let text = String::from_utf8(bytes).map_err(|e| NarError::BadPath {
        path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })?;
    StorePath::new(&text).map_err(|_| NarError::BadPath { path: text })
}

/// Where the NAR walker is in the grammar.
enum State {
    /// A node starts: `"(" "type" …`.
    Node,
    /// Inside a directory: an entry or the directory's `")"`.
    Directory,
    /// A node has ended: the archive ends, or the entry holding it is closed.
    AfterNode,
}

/// Reads from `reader`, buffering everything read to be written to `writer`.
struct Tee<'a, R, W> {
    reader: &'a mut R,
    writer: &'a mut W,
    out: Vec<u8>,
    /// While true, nothing is written, whatever the buffer's size.
    hold: bool,
    /// Bytes of the current NAR read so far.
    nar_size: u64,
    /// The size limit of the current NAR (`u64::MAX` outside one).
    nar_max: u64,
    /// File contents pass through here (allocated at the first non-empty file).
    chunk: Vec<u8>,
}

impl<'a, R, W> Tee<'a, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    fn new(reader: &'a mut R, writer: &'a mut W) -> Self {
        Self {
            reader,
            writer,
            out: Vec::with_capacity(CHUNK),
            hold: false,
            nar_size: 0,
            nar_max: u64::MAX,
            chunk: Vec::new(),
        }
    }

    async fn flush(&mut self) -> Result<(), NarError> {
        self.write_out().await?;
        self.writer.flush().await.map_err(NarError::Write)
    }

    /// Writes the buffered output, if any, and empties the buffer.
    async fn write_out(&mut self) -> Result<(), NarError> {
        if !self.out.is_empty() {
            self.writer
                .write_all(&self.out)
                .await
                .map_err(NarError::Write)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Counts `n` more bytes against the NAR's size limit.
    fn account(&mut self, n: u64) -> Result<(), NarError> {
        match self.nar_size.checked_add(n) {
            Some(size) if size <= self.nar_max => {
                self.nar_size = size;
                Ok(())
            }
            _ => Err(NarError::TooLarge { max: self.nar_max }),
        }
    }

    /// Reads exactly `n` bytes (at most [`CHUNK`]) onto the end of the buffer and returns
    /// where they start.
    async fn fill(&mut self, n: usize) -> Result<usize, NarError> {
        self.account(n as u64)?;
        let start = self.out.len();
        self.out.resize(start + n, 0);
        self.reader
            .read_exact(&mut self.out[start..])
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => NarError::Truncated,
                _ => NarError::Read(e),
            })?;
        Ok(start)
    }

    async fn written_if_large(&mut self) -> Result<(), NarError> {
        if !self.hold && self.out.len() >= CHUNK {
            self.writer
                .write_all(&self.out)
                .await
                .map_err(NarError::Write)?;
            self.out.clear();
        }
        Ok(())
    }

    async fn u64(&mut self) -> Result<u64, NarError> {
        let at = self.fill(8).await?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.out[at..at + 8]);
        self.written_if_large().await?;
        Ok(u64::from_le_bytes(word))
    }

    /// Reads a string of at most `max` bytes (`max` must be small: it is read at once).
    async fn string(&mut self, max: u64, what: &'static str) -> Result<Vec<u8>, NarError> {
        let len = self.u64().await?;
        if len > max {
            return Err(NarError::TooLong { what, len, max });
        }
        // Bounded by `max`, which callers keep far below CHUNK and usize::MAX.
        let len = len as usize;
        let pad = padding(len as u64);
        let at = self.fill(len + pad).await?;
        let bytes = self.out[at..at + len].to_vec();
        if self.out[at + len..].iter().any(|&b| b != 0) {
            return Err(NarError::Padding);
        }
        self.written_if_large().await?;
        Ok(bytes)
    }

    async fn keyword(&mut self) -> Result<Vec<u8>, NarError> {
        self.string(MAX_KEYWORD_LEN, "keyword").await
    }

    async fn expect(&mut self, expected: &'static str) -> Result<(), NarError> {
        let found = self.keyword().await?;
        if found == expected.as_bytes() {
            Ok(())
        } else {
            Err(unexpected(expected, &found))
        }
    }

    /// Copies `len` bytes of file contents and their padding, in chunks of at most
    /// [`CONTENTS_CHUNK`] that go straight from `reader` to `writer` (nothing is buffered or
    /// zeroed per byte, unless the output is held).
    async fn contents(&mut self) -> Result<(), NarError> {
        let len = self.u64().await?;
        let pad = padding(len) as u64;
        // Refuse an oversized file before reading any of it.
        let total = len
            .checked_add(pad)
            .ok_or(NarError::TooLarge { max: self.nar_max })?;
        if self.nar_size.saturating_add(total) > self.nar_max {
            return Err(NarError::TooLarge { max: self.nar_max });
        }
        if self.chunk.is_empty() && len > 0 {
            self.chunk = vec![0; CONTENTS_CHUNK];
        }
        let mut left = len;
        while left > 0 {
            // At most CONTENTS_CHUNK, so it fits in usize.
            let want = left.min(self.chunk.len() as u64) as usize;
            let n = self
                .reader
                .read(&mut self.chunk[..want])
                .await
                .map_err(NarError::Read)?;
            if n == 0 {
                return Err(NarError::Truncated);
            }
            self.account(n as u64)?;
            if self.hold {
                self.out.extend_from_slice(&self.chunk[..n]);
            } else {
                self.write_out().await?;
                self.writer
                    .write_all(&self.chunk[..n])
                    .await
                    .map_err(NarError::Write)?;
            }
            left -= n as u64;
        }
        let at = self.fill(pad as usize).await?;
        if self.out[at..].iter().any(|&b| b != 0) {
            return Err(NarError::Padding);
        }
        self.written_if_large().await
    }

    /// Walks one NAR and returns its size.
    async fn nar(&mut self, limits: &NarLimits) -> Result<u64, NarError> {
        self.nar_size = 0;
        self.nar_max = limits.max_nar_size;
        let result = self.walk(limits).await;
        self.nar_max = u64::MAX;
        result.map(|()| self.nar_size)
    }

    async fn walk(&mut self, limits: &NarLimits) -> Result<(), NarError> {
        let magic = self.keyword().await?;
        if magic != NAR_MAGIC {
            return Err(unexpected("nix-archive-1", &magic));
        }
        // One entry per open directory: the name of its last entry, for the order check.
        let mut directories: Vec<Vec<u8>> = Vec::new();
        let mut state = State::Node;
        loop {
            state = match state {
                State::Node => {
                    self.expect("(").await?;
                    self.expect("type").await?;
                    let kind = self.keyword().await?;
                    match kind.as_slice() {
                        b"regular" => {
                            self.regular().await?;
                            State::AfterNode
                        }
                        b"symlink" => {
                            self.expect("target").await?;
                            let target = self.string(limits.max_target_len, "target").await?;
                            if target.is_empty() || target.contains(&0) {
                                return Err(NarError::BadName {
                                    name: String::from_utf8_lossy(&target).into_owned(),
                                });
                            }
                            self.expect(")").await?;
                            State::AfterNode
                        }
                        b"directory" => {
                            if directories.len() >= limits.max_depth {
                                return Err(NarError::TooDeep {
                                    max: limits.max_depth,
                                });
                            }
                            directories.push(Vec::new());
                            State::Directory
                        }
                        _ => return Err(unexpected("regular, symlink or directory", &kind)),
                    }
                }
                State::Directory => {
                    let token = self.keyword().await?;
                    match token.as_slice() {
                        b")" => {
                            directories.pop();
                            State::AfterNode
                        }
                        b"entry" => {
                            self.expect("(").await?;
                            self.expect("name").await?;
                            let name = self.string(limits.max_name_len, "name").await?;
                            check_name(&name)?;
                            if let Some(last) = directories.last_mut() {
                                // Also refuses duplicates, which would overwrite each other.
                                if !last.is_empty() && name <= *last {
                                    return Err(NarError::Unsorted {
                                        name: String::from_utf8_lossy(&name).into_owned(),
                                    });
                                }
                                *last = name;
                            }
                            self.expect("node").await?;
                            State::Node
                        }
                        _ => return Err(unexpected("entry or )", &token)),
                    }
                }
                State::AfterNode => {
                    if directories.is_empty() {
                        return Ok(());
                    }
                    // Closes the entry of the node that just ended.
                    self.expect(")").await?;
                    State::Directory
                }
            };
        }
    }

    /// Walks the rest of a regular file: `["executable" ""] ["contents" bytes] ")"`.
    async fn regular(&mut self) -> Result<(), NarError> {
        let mut token = self.keyword().await?;
        if token == b"executable" {
            self.expect("").await?;
            token = self.keyword().await?;
        }
        if token == b"contents" {
            self.contents().await?;
            token = self.keyword().await?;
        }
        if token == b")" {
            Ok(())
        } else {
            Err(unexpected(")", &token))
        }
    }
}

fn check_name(name: &[u8]) -> Result<(), NarError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(NarError::BadName {
            name: String::from_utf8_lossy(name).into_owned(),
        });
    }
    Ok(())
}

fn unexpected(expected: &'static str, found: &[u8]) -> NarError {
    NarError::Unexpected {
        expected,
        found: String::from_utf8_lossy(found).into_owned(),
    }
}

/// Builders of archives and export streams for this module's and the client's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::EXPORT_MAGIC;
    use crate::serve::wire::{put_bytes, put_u64};

    /// Writes NAR tokens.
    pub(crate) fn nar(tokens: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for token in tokens {
            put_bytes(&mut buf, token);
        }
        buf
    }

    /// Returns the NAR of a regular file.
    pub(crate) fn file(contents: &[u8]) -> Vec<u8> {
        nar(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"regular",
            b"contents",
            contents,
            b")",
        ])
    }

    /// Appends one path to an export stream: its contents are its own name.
    pub(crate) fn export_record(buf: &mut Vec<u8>, path: &str, references: &[&str]) {
        put_u64(buf, 1);
        buf.extend_from_slice(&file(path.as_bytes()));
        put_u64(buf, EXPORT_MAGIC);
        put_bytes(buf, path.as_bytes());
        put_u64(buf, references.len() as u64);
        for r in references {
            put_bytes(buf, r.as_bytes());
        }
        put_bytes(buf, b"");
        put_u64(buf, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::put_u64;
    use super::testing::{export_record, file, nar};
    use super::*;

    async fn copy(input: &[u8], limits: &NarLimits) -> Result<(u64, Vec<u8>, usize), NarError> {
        let mut reader = input;
        let mut out = Vec::new();
        let size = copy_nar(&mut reader, &mut out, limits).await?;
        Ok((size, out, reader.len()))
    }

    #[tokio::test]
    async fn copy_nar_should_copy_exactly_one_archive_and_leave_what_follows() {
        let mut input = file(b"hello");
        let len = input.len();
        input.extend_from_slice(b"next reply");
        let (size, out, left) = copy(&input, &NarLimits::default()).await.unwrap();
        assert_eq!(size, len as u64);
        assert_eq!(out, &input[..len]);
        assert_eq!(left, b"next reply".len());
    }

    #[tokio::test]
    async fn copy_nar_should_copy_contents_larger_than_a_chunk() {
        let big = vec![7u8; CHUNK * 2 + 13];
        let input = file(&big);
        let (size, out, _) = copy(&input, &NarLimits::default()).await.unwrap();
        assert_eq!(size, input.len() as u64);
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn copy_nar_should_refuse_unsorted_duplicate_and_bad_names() {
        let dir = |a: &[u8], b: &[u8]| {
            let mut tokens: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
            for name in [a, b] {
                tokens.extend_from_slice(&[b"entry", b"(", b"name", name, b"node"]);
                tokens.extend_from_slice(&[b"(", b"type", b"symlink", b"target", b"x", b")", b")"]);
            }
            tokens.push(b")");
            nar(&tokens)
        };
        let limits = NarLimits::default();
        assert!(copy(&dir(b"a", b"b"), &limits).await.is_ok());
        for (a, b) in [(&b"b"[..], &b"a"[..]), (b"a", b"a")] {
            let err = copy(&dir(a, b), &limits).await.unwrap_err();
            assert!(matches!(err, NarError::Unsorted { .. }), "{err:?}");
        }
        for bad in [&b".."[..], b"a/b", b""] {
            let err = copy(&dir(b"0", bad), &limits).await.unwrap_err();
            assert!(matches!(err, NarError::BadName { .. }), "{err:?}");
        }
    }

    #[tokio::test]
    async fn copy_nar_should_refuse_deep_nesting_beyond_the_limit() {
        let nested = |depth: usize| {
            let mut tokens: Vec<&[u8]> = vec![b"nix-archive-1"];
            for _ in 0..depth {
                tokens.extend_from_slice(&[
                    b"(",
                    b"type",
                    b"directory",
                    b"entry",
                    b"(",
                    b"name",
                    b"d",
                    b"node",
                ]);
            }
            tokens.extend_from_slice(&[b"(", b"type", b"directory", b")"]);
            for _ in 0..depth {
                tokens.extend_from_slice(&[b")", b")"]);
            }
            nar(&tokens)
        };
        let limits = NarLimits {
            max_depth: 4,
            ..NarLimits::default()
        };
        assert!(copy(&nested(3), &limits).await.is_ok());
        let err = copy(&nested(4), &limits).await.unwrap_err();
        assert!(matches!(err, NarError::TooDeep { max: 4 }), "{err:?}");
    }

    #[tokio::test]
    async fn copy_nar_should_refuse_absurd_lengths_before_reading_them() {
        // A file announcing 2^62 bytes of contents, with none following.
        let mut huge = nar(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
        put_u64(&mut huge, 1 << 62);
        let err = copy(&huge, &NarLimits::default()).await.unwrap_err();
        assert!(matches!(err, NarError::TooLarge { .. }), "{err:?}");
        // Overflowing length + padding.
        let mut wrap = nar(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
        put_u64(&mut wrap, u64::MAX);
        let err = copy(&wrap, &NarLimits::default()).await.unwrap_err();
        assert!(matches!(err, NarError::TooLarge { .. }), "{err:?}");
        // A keyword or name announcing 2^64-1 bytes.
        let mut token = Vec::new();
        put_u64(&mut token, u64::MAX);
        let err = copy(&token, &NarLimits::default()).await.unwrap_err();
        assert!(
            matches!(
                err,
                NarError::TooLong {
                    what: "keyword",
                    ..
                }
            ),
            "{err:?}"
        );
        let mut name = nar(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
        ]);
        put_u64(&mut name, 256);
        let err = copy(&name, &NarLimits::default()).await.unwrap_err();
        assert!(
            matches!(
                err,
                NarError::TooLong {
                    what: "name",
                    len: 256,
                    max: 255
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn copy_nar_should_refuse_every_truncation_and_nonzero_padding() {
        let input = file(b"abc");
        for cut in 0..input.len() {
            let err = copy(&input[..cut], &NarLimits::default())
                .await
                .unwrap_err();
            assert!(matches!(err, NarError::Truncated), "cut at {cut}: {err:?}");
        }
        let mut padded = input.clone();
        // "abc" is followed by five padding bytes, then the two words of ")".
        let at = padded.len() - 16 - 1;
        padded[at] = 1;
        let err = copy(&padded, &NarLimits::default()).await.unwrap_err();
        assert!(matches!(err, NarError::Padding), "{err:?}");
    }

    const A: &str = "/nix/store/00000000000000000000000000000000-a";
    const B: &str = "/nix/store/11111111111111111111111111111111-b";

    #[tokio::test]
    async fn copy_export_should_copy_every_path_up_to_the_final_zero() {
        let mut input = Vec::new();
        export_record(&mut input, A, &[]);
        export_record(&mut input, B, &[A]);
        put_u64(&mut input, 0);
        let len = input.len();
        input.extend_from_slice(&[9; 8]);
        let mut reader = input.as_slice();
        let mut out = Vec::new();
        let paths = copy_export(&mut reader, &mut out, &NarLimits::default(), |_| true)
            .await
            .unwrap();
        assert_eq!(
            paths,
            [StorePath::new(A).unwrap(), StorePath::new(B).unwrap()]
        );
        assert_eq!(out, &input[..len]);
        assert_eq!(reader, [9; 8]);
    }

    #[tokio::test]
    async fn copy_export_should_withhold_the_metadata_of_an_unexpected_path() {
        let mut input = Vec::new();
        export_record(&mut input, A, &[]);
        let first = input.len();
        export_record(&mut input, B, &[A]);
        put_u64(&mut input, 0);
        let mut out = Vec::new();
        let err = copy_export(
            &mut input.as_slice(),
            &mut out,
            &NarLimits::default(),
            |p| p.as_str() == A,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, NarError::UnexpectedPath { path } if path.as_str() == B),
            "{err:?}"
        );
        // A in full, then B's `1` and NAR, but not B's trailer.
        let nar_b = file(B.as_bytes()).len();
        assert_eq!(out.len(), first + 8 + nar_b);
        assert_eq!(out, &input[..out.len()]);
    }

    #[tokio::test]
    async fn copy_export_should_refuse_a_bad_magic_or_path() {
        let mut input = Vec::new();
        export_record(&mut input, A, &[]);
        let nar_end = 8 + file(A.as_bytes()).len();
        let mut bad_magic = input.clone();
        bad_magic[nar_end] ^= 1;
        let err = copy_export(
            &mut bad_magic.as_slice(),
            &mut Vec::new(),
            &NarLimits::default(),
            |_| true,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, NarError::Unexpected { .. }), "{err:?}");
        let mut bad_path = Vec::new();
        export_record(&mut bad_path, "/etc/passwd", &[]);
        let err = copy_export(
            &mut bad_path.as_slice(),
            &mut Vec::new(),
            &NarLimits::default(),
            |_| true,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, NarError::BadPath { .. }), "{err:?}");
    }
}
