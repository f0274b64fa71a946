//! [`dump_nar`]: writes the NAR of a file tree read from the file system, as
//! `nix-store --dump` does, so that a local store path can be streamed to a builder without
//! starting a Nix process for it.
//!
//! The archive is only as right as the file system: the receiver of `cmdAddToStoreNar` checks it
//! against the size and hash the local store registered, so a tree that changed, or a store
//! path found at the wrong place, is refused there.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::wire::{padding, put_bytes, put_u64};

/// The size of the pieces the archive is handed over in (framing and file contents together).
const CHUNK: usize = 256 << 10;
/// How many pieces the reader may be ahead of the writer: reading the next files overlaps
/// writing the previous ones, within 1 MiB.
const READ_AHEAD: usize = 4;

/// Why [`dump_nar`] stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DumpError {
    /// The tree could not be read, changed while it was read, holds another kind of file,
    /// or its archive would be larger than allowed.
    #[error("cannot read the tree")]
    Read(#[source] std::io::Error),
    /// The output could not be written.
    #[error("cannot write the archive")]
    Write(#[source] std::io::Error),
}

/// Writes the NAR of the tree at `root` (a regular file, a symlink or a directory) to `out`
/// and returns its size; stops with an error before writing more than `max` bytes. Directory
/// entries go in byte order, a file is executable when its owner may execute it, and other
/// kinds of files (sockets, devices…) are refused, as in Nix.
///
/// The tree is read on a blocking thread, a few pieces ahead of `out`: the bytes go from the
/// files to `out` without another copy, and the files are read while `out` is written.
///
/// # Errors
/// [`DumpError::Read`] when the tree cannot be read, holds another kind of file, changes while
/// it is read, or its NAR would exceed `max`; [`DumpError::Write`] when `out` cannot be written.
pub(crate) async fn dump_nar<W: AsyncWrite + Unpin>(
    root: &Path,
    out: &mut W,
    max: u64,
) -> Result<u64, DumpError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(READ_AHEAD);
    let root = root.to_owned();
    let reading = tokio::task::spawn_blocking(move || {
        dump_blocking(&root, max, |piece| {
            tx.blocking_send(piece).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the writer stopped")
            })
        })
    });
    let mut written = Ok(());
    while let Some(piece) = rx.recv().await {
        if let Err(err) = out.write_all(&piece).await {
            written = Err(err);
            break;
        }
    }
    // Stops a reader that is still going (its next piece finds no writer).
    drop(rx);
    let read = reading
        .await
        .map_err(|e| DumpError::Read(std::io::Error::other(e)))?;
    written.map_err(DumpError::Write)?;
    let size = read.map_err(DumpError::Read)?;
    out.flush().await.map_err(DumpError::Write)?;
    Ok(size)
}

/// Produces the NAR of the tree at `root` in pieces of about [`CHUNK`] bytes, handed to `emit`
/// (blocking IO); returns its size.
fn dump_blocking(
    root: &Path,
    max: u64,
    emit: impl FnMut(Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let mut dumper = Dumper {
        emit,
        buf: Vec::with_capacity(CHUNK),
        written: 0,
        max,
    };
    dumper.token(b"nix-archive-1")?;
    // One entry per open directory: its path and the names of the entries still to write.
    let mut stack: Vec<(PathBuf, std::vec::IntoIter<Vec<u8>>)> = Vec::new();
    if let Some(entries) = dumper.node(root)? {
        stack.push((root.to_owned(), entries));
    }
    while let Some((dir, entries)) = stack.last_mut() {
        match entries.next() {
            Some(name) => {
                let path = dir.join(OsString::from_vec(name.clone()));
                for token in [&b"entry"[..], b"(", b"name", &name, b"node"] {
                    dumper.token(token)?;
                }
                match dumper.node(&path)? {
                    Some(entries) => stack.push((path, entries)),
                    None => dumper.token(b")")?,
                }
            }
            None => {
                stack.pop();
                // Closes the directory node, then the entry holding it.
                dumper.token(b")")?;
                if !stack.is_empty() {
                    dumper.token(b")")?;
                }
            }
        }
        dumper.emit_full()?;
    }
    if !dumper.buf.is_empty() {
        let last = std::mem::take(&mut dumper.buf);
        (dumper.emit)(last)?;
    }
    Ok(dumper.written)
}

struct Dumper<F> {
    emit: F,
    /// The piece being filled.
    buf: Vec<u8>,
    /// Bytes of the archive so far, emitted or buffered.
    written: u64,
    max: u64,
}

fn too_large(max: u64) -> std::io::Error {
    std::io::Error::other(format!("the archive is larger than {max} bytes"))
}

impl<F: FnMut(Vec<u8>) -> std::io::Result<()>> Dumper<F> {
    /// Counts `n` more bytes of archive against the limit.
    fn account(&mut self, n: u64) -> std::io::Result<()> {
        match self.written.checked_add(n) {
            Some(total) if total <= self.max => {
                self.written = total;
                Ok(())
            }
            _ => Err(too_large(self.max)),
        }
    }

    fn token(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let len = bytes.len() as u64;
        self.account(8 + len + padding(len) as u64)?;
        put_bytes(&mut self.buf, bytes);
        Ok(())
    }

    /// Hands the piece over once it holds [`CHUNK`] bytes or more.
    fn emit_full(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= CHUNK {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            (self.emit)(full)?;
        }
        Ok(())
    }

    /// Writes the node at `path`; for a directory, only its opening, and returns its entries
    /// in byte order.
    fn node(&mut self, path: &Path) -> std::io::Result<Option<std::vec::IntoIter<Vec<u8>>>> {
        let meta = std::fs::symlink_metadata(path)?;
        self.token(b"(")?;
        self.token(b"type")?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = std::fs::read_link(path)?.into_os_string().into_vec();
            for token in [&b"symlink"[..], b"target", &target, b")"] {
                self.token(token)?;
            }
            Ok(None)
        } else if kind.is_file() {
            self.token(b"regular")?;
            if meta.permissions().mode() & 0o100 != 0 {
                self.token(b"executable")?;
                self.token(b"")?;
            }
            self.token(b"contents")?;
            self.contents(path, meta.len())?;
            self.token(b")")?;
            Ok(None)
        } else if kind.is_dir() {
            self.token(b"directory")?;
            let mut names = Vec::new();
            for entry in std::fs::read_dir(path)? {
                names.push(entry?.file_name().into_vec());
            }
            names.sort_unstable();
            Ok(Some(names.into_iter()))
        } else {
            Err(std::io::Error::other(format!(
                "{} is not a regular file, symlink or directory",
                path.display()
            )))
        }
    }

    /// Writes a file's length, its `len` bytes and their padding.
    fn contents(&mut self, path: &Path, len: u64) -> std::io::Result<()> {
        let pad = padding(len);
        let total = len
            .checked_add(8 + pad as u64)
            .ok_or_else(|| too_large(self.max))?;
        self.account(total)?;
        put_u64(&mut self.buf, len);
        let mut file = File::open(path)?;
        let mut left = len;
        while left > 0 {
            // Fills the piece up to CHUNK (a few KiB at least), read straight into it.
            let room = CHUNK.saturating_sub(self.buf.len()).max(4 << 10) as u64;
            // At most CHUNK, so it fits in usize.
            let want = left.min(room) as usize;
            let at = self.buf.len();
            self.buf.resize(at + want, 0);
            let n = match file.read(&mut self.buf[at..]) {
                Ok(n) => n,
                Err(err) => {
                    self.buf.truncate(at);
                    return Err(err);
                }
            };
            self.buf.truncate(at + n);
            if n == 0 {
                return Err(std::io::Error::other(format!(
                    "{} became shorter while it was read",
                    path.display()
                )));
            }
            left -= n as u64;
            self.emit_full()?;
        }
        let mut probe = [0u8; 1];
        if file.read(&mut probe)? != 0 {
            return Err(std::io::Error::other(format!(
                "{} became longer while it was read",
                path.display()
            )));
        }
        self.buf.resize(self.buf.len() + pad, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::process::Command;

    use super::*;

    /// A tree with every kind of node, names whose byte order differs from other orders, an
    /// empty file, an executable and a file larger than a read chunk.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir_all(root.join("sub/deeper/deepest")).unwrap();
        std::fs::create_dir_all(root.join("empty-dir")).unwrap();
        for name in ["B", "a", "\u{e4}", "a.b", "a-b"] {
            std::fs::write(root.join(name), name).unwrap();
        }
        std::fs::write(root.join("empty"), "").unwrap();
        let big: Vec<u8> = (0..CHUNK * 2 + 13).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join("sub/deeper/deepest/big"), big).unwrap();
        let script = root.join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        symlink("a", root.join("link")).unwrap();
        symlink("../../a", root.join("sub/deeper/up")).unwrap();
        (dir, root)
    }

    fn nix_dump(path: &Path) -> Vec<u8> {
        let out = Command::new("nix-store")
            .arg("--dump")
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }

    #[tokio::test]
    async fn dump_nar_should_write_what_nix_store_dump_writes() {
        let (_dir, root) = tree();
        for path in [
            root.clone(),
            root.join("a"),
            root.join("run.sh"),
            root.join("link"),
            root.join("empty"),
            root.join("empty-dir"),
            root.join("sub/deeper/deepest/big"),
        ] {
            let mut out = Vec::new();
            let size = dump_nar(&path, &mut out, u64::MAX).await.unwrap();
            let expected = nix_dump(&path);
            assert_eq!(size, expected.len() as u64, "{}", path.display());
            assert!(out == expected, "{}", path.display());
        }
    }

    #[tokio::test]
    async fn dump_nar_should_stop_before_writing_more_than_the_limit() {
        let (_dir, root) = tree();
        let full = nix_dump(&root).len() as u64;
        for max in [0, 100, full / 2, full - 1] {
            let mut out = Vec::new();
            let Err(DumpError::Read(err)) = dump_nar(&root, &mut out, max).await else {
                panic!("{max}: not a read error");
            };
            assert!(err.to_string().contains("larger than"), "{err}");
            assert!(out.len() as u64 <= max, "{max}: {}", out.len());
        }
        let Err(DumpError::Read(err)) =
            dump_nar(&root.join("missing"), &mut Vec::new(), u64::MAX).await
        else {
            panic!("not a read error");
        };
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
