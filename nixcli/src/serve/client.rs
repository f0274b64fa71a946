//! [`ServeClient`]: the serve-protocol commands reconix needs, over any stream pair.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use std::collections::HashSet;

use reconix_spec::names::StorePath;

use std::path::Path;

use super::ServeError;
use super::dump::{DumpError, dump_nar};
use super::nar::{NarError, NarLimits, copy_export, copy_nar};
use super::wire::{
    ADD_TO_STORE_NAR_MINOR, BasicDerivation, BuildResult, BuildSettings, CMD_IMPORT_PATHS, NarInfo,
    SERVE_MAGIC_1, SERVE_MAGIC_2, SERVE_PROTOCOL_VERSION, ServedPathInfo, encode_add_to_store_nar,
    encode_build_derivation, encode_build_paths, encode_export_paths, encode_query_closure,
    encode_query_path_infos, encode_query_valid_paths, major, minor, put_u64, read_build_result,
    read_bytes, read_path_infos, read_strings, read_u64,
};
use crate::parse::stderr::strip_ansi;

/// The answer to `cmdBuildPaths`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildPathsReply {
    /// Every requested output is valid.
    Built,
    /// Building failed. Nix 2.8 sends `e.status, e.msg()`.
    Failed {
        /// The status Nix would exit with: 100 build failure, 101 timeout, 102 hash mismatch,
        /// 1 any other error (`crate::build::exit` explains the bits).
        status: u64,
        /// Nix's message with its ANSI colour codes removed, e.g.
        /// `error: builder for '/nix/store/…-x.drv' failed with exit code 3`.
        message: String,
    },
}

/// A connected serve-protocol client: the handshake is done, commands run one at a time.
///
/// Reads are not buffered (a command's reply is a few numbers); pass a buffered reader for
/// commands with large replies (`cmdExportPaths`).
///
/// A command that fails with an error (not a failed *build*, which is a reply) may leave the
/// stream half-way through a reply or a request: the connection must then be dropped.
pub struct ServeClient<R, W> {
    reader: R,
    writer: W,
    server_version: u64,
    nar_limits: NarLimits,
}

impl<R, W> std::fmt::Debug for ServeClient<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeClient")
            .field(
                "server_version",
                &format_args!("{:#x}", self.server_version),
            )
            .finish_non_exhaustive()
    }
}

impl<R, W> ServeClient<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Performs the handshake: sends `SERVE_MAGIC_1`, expects `SERVE_MAGIC_2` and the server's
    /// version, then sends the client version 2.7.
    ///
    /// # Errors
    /// When the stream fails or closes, or the server is not a serve-protocol 2.x server.
    pub async fn handshake(mut reader: R, mut writer: W) -> Result<Self, ServeError> {
        let mut hello = Vec::new();
        put_u64(&mut hello, SERVE_MAGIC_1);
        send(&mut writer, &hello).await?;
        let magic = read_u64(&mut reader).await?;
        if magic != SERVE_MAGIC_2 {
            return Err(ServeError::BadMagic { got: magic });
        }
        let server_version = read_u64(&mut reader).await?;
        if major(server_version) != major(SERVE_PROTOCOL_VERSION) {
            return Err(ServeError::UnsupportedVersion {
                version: server_version,
            });
        }
        let mut version = Vec::new();
        put_u64(&mut version, SERVE_PROTOCOL_VERSION);
        send(&mut writer, &version).await?;
        Ok(Self {
            reader,
            writer,
            server_version,
            nar_limits: NarLimits::default(),
        })
    }

    /// Returns this client with other bounds on the NARs it copies in export streams.
    #[must_use]
    pub fn with_nar_limits(self, limits: NarLimits) -> Self {
        Self {
            nar_limits: limits,
            ..self
        }
    }

    /// Returns the protocol version the server announced, e.g. `0x207`.
    pub fn server_version(&self) -> u64 {
        self.server_version
    }

    /// Sends `cmdBuildPaths` without waiting for the reply (see
    /// [`read_build_paths_reply`](Self::read_build_paths_reply)), so that a caller can tell a
    /// server that was already gone (nothing was started) from one that died while building.
    ///
    /// # Errors
    /// When the stream cannot be written.
    pub async fn send_build_paths<S: AsRef<str>>(
        &mut self,
        paths: &[S],
        settings: &BuildSettings,
    ) -> Result<(), ServeError> {
        let command = encode_build_paths(paths, settings, self.server_version);
        send(&mut self.writer, &command).await
    }

    /// Reads the reply to `cmdBuildPaths`. Not cancel-safe: dropping it half-way leaves the
    /// stream out of step, so the connection must then be abandoned.
    ///
    /// # Errors
    /// When the stream fails or closes, or the reply is malformed.
    pub async fn read_build_paths_reply(&mut self) -> Result<BuildPathsReply, ServeError> {
        let status = read_u64(&mut self.reader).await?;
        if status == 0 {
            return Ok(BuildPathsReply::Built);
        }
        let message = read_bytes(&mut self.reader).await?;
        Ok(BuildPathsReply::Failed {
            status,
            message: strip_ansi(&String::from_utf8_lossy(&message)),
        })
    }

    /// Builds `paths` (`drv!out,dev` strings, or plain store paths to make valid) and returns
    /// the reply.
    ///
    /// # Errors
    /// As [`send_build_paths`](Self::send_build_paths) and
    /// [`read_build_paths_reply`](Self::read_build_paths_reply).
    pub async fn build_paths<S: AsRef<str>>(
        &mut self,
        paths: &[S],
        settings: &BuildSettings,
    ) -> Result<BuildPathsReply, ServeError> {
        self.send_build_paths(paths, settings).await?;
        self.read_build_paths_reply().await
    }

    /// Returns which of `paths` are valid on the server. With `lock`, the server keeps a
    /// temporary GC root on each of them for as long as it runs; with `substitute` it first
    /// tries to substitute the missing ones.
    ///
    /// # Errors
    /// When the stream fails or closes, or the reply is malformed.
    pub async fn query_valid_paths<S: AsRef<str>>(
        &mut self,
        paths: &[S],
        lock: bool,
        substitute: bool,
    ) -> Result<Vec<String>, ServeError> {
        let command = encode_query_valid_paths(paths, lock, substitute);
        send(&mut self.writer, &command).await?;
        read_strings(&mut self.reader).await
    }

    /// Returns the closure of `paths` on the server (with the outputs of the derivations in it
    /// when `include_outputs`), in no particular order.
    ///
    /// # Errors
    /// When the stream fails or closes, or the reply is malformed.
    pub async fn query_closure<S: AsRef<str>>(
        &mut self,
        paths: &[S],
        include_outputs: bool,
    ) -> Result<Vec<String>, ServeError> {
        let command = encode_query_closure(paths, include_outputs);
        send(&mut self.writer, &command).await?;
        read_strings(&mut self.reader).await
    }

    /// Returns the path infos of the valid ones among `paths` (`cmdQueryPathInfos`).
    ///
    /// # Errors
    /// When the stream fails or closes, or the reply is malformed or longer than asked.
    pub async fn query_path_infos<S: AsRef<str>>(
        &mut self,
        paths: &[S],
    ) -> Result<Vec<ServedPathInfo>, ServeError> {
        let command = encode_query_path_infos(paths);
        send(&mut self.writer, &command).await?;
        read_path_infos(&mut self.reader, paths.len()).await
    }

    /// Sends `cmdImportPaths` with the export stream read from `export` (as written by
    /// `nix-store --export`: references must come before their referrers, and must be valid on
    /// the server or in the stream) and returns the paths it held. The stream is checked as it
    /// is copied, and exactly one stream is read from `export`. The server does not check
    /// signatures.
    ///
    /// # Errors
    /// When `export` is not a well-formed export stream ([`ServeError::Archive`]; the server
    /// then has a partial stream and the connection is unusable), when the server fails to
    /// import it (it closes the connection: its stderr says why), or when it does not
    /// acknowledge.
    pub async fn import_paths<E: AsyncRead + Unpin>(
        &mut self,
        export: &mut E,
    ) -> Result<Vec<StorePath>, ServeError> {
        let mut command = Vec::new();
        put_u64(&mut command, CMD_IMPORT_PATHS);
        send(&mut self.writer, &command).await?;
        let paths = copy_export(export, &mut self.writer, &self.nar_limits, |_| true)
            .await
            .map_err(|e| match e {
                NarError::Write(source) => write_error(source),
                other => ServeError::Archive(other),
            })?;
        match read_u64(&mut self.reader).await? {
            1 => Ok(paths),
            got => Err(ServeError::UnexpectedReply {
                command: "cmdImportPaths",
                got,
            }),
        }
    }

    /// Returns true when the server reads `cmdAddToStoreNar` (serve protocol 2.5 and later, Nix
    /// 2.4 and later), see [`add_to_store_nar`](Self::add_to_store_nar).
    pub fn supports_add_to_store_nar(&self) -> bool {
        minor(self.server_version) >= ADD_TO_STORE_NAR_MINOR
    }

    /// Sends one path with `cmdAddToStoreNar`: `info`, then its NAR read from `nar` (e.g. the
    /// stdout of `nix store dump-path`), checked as it is copied. The server streams the NAR
    /// into its store, checks its size and hash against `info` and registers the path, whose
    /// references must be valid there already. It does not check signatures.
    ///
    /// Exactly `info.nar_size` bytes are sent: a NAR that would be longer is stopped before
    /// its excess is read, and one that is shorter is an error.
    ///
    /// # Errors
    /// When the server does not read the command ([`ServeError::UnsupportedVersion`], nothing
    /// sent), `info.nar_size` is 0 or `nar` is not a well-formed NAR of exactly that size
    /// ([`ServeError::Archive`]; the server then waits for the rest and the connection is
    /// unusable), when the server fails to add it (it closes the connection: its stderr says
    /// why), or when it does not acknowledge.
    pub async fn add_to_store_nar<N: AsyncRead + Unpin>(
        &mut self,
        info: &NarInfo,
        nar: &mut N,
    ) -> Result<(), ServeError> {
        let limits = NarLimits {
            max_nar_size: self.nar_limits.max_nar_size.min(info.nar_size),
            ..self.nar_limits
        };
        self.add_nar_with(info, async |writer| {
            copy_nar(nar, writer, &limits).await.map_err(|e| match e {
                NarError::Write(source) => write_error(source),
                other => ServeError::Archive(other),
            })
        })
        .await
    }

    /// Sends one path with `cmdAddToStoreNar` as [`add_to_store_nar`](Self::add_to_store_nar)
    /// does, its NAR written from the files at `root` (its place in the local store) by
    /// [`dump_nar`]: the archive is this program's own, so it is not walked again; it stops
    /// before exceeding `info.nar_size`.
    ///
    /// # Errors
    /// Those of [`add_to_store_nar`](Self::add_to_store_nar); a tree that cannot be read is
    /// [`NarError::Read`] in [`ServeError::Archive`].
    pub(crate) async fn add_to_store_nar_from_files(
        &mut self,
        info: &NarInfo,
        root: &Path,
    ) -> Result<(), ServeError> {
        self.add_nar_with(info, async |writer| {
            dump_nar(root, writer, info.nar_size)
                .await
                .map_err(|e| match e {
                    DumpError::Read(source) => ServeError::Archive(NarError::Read(source)),
                    DumpError::Write(source) => write_error(source),
                })
        })
        .await
    }

    /// Sends `cmdAddToStoreNar` with `info`, then the NAR `write` writes (returning its size),
    /// and reads the acknowledgement.
    async fn add_nar_with(
        &mut self,
        info: &NarInfo,
        write: impl AsyncFnOnce(&mut W) -> Result<u64, ServeError>,
    ) -> Result<(), ServeError> {
        if !self.supports_add_to_store_nar() {
            return Err(ServeError::UnsupportedVersion {
                version: self.server_version,
            });
        }
        if info.nar_size == 0 {
            // No NAR is empty, and Nix refuses a size of 0 (and then exits).
            return Err(ServeError::Archive(NarError::TooLarge { max: 0 }));
        }
        let command = encode_add_to_store_nar(info);
        self.writer.write_all(&command).await.map_err(write_error)?;
        let size = write(&mut self.writer).await?;
        if size != info.nar_size {
            return Err(ServeError::Archive(NarError::WrongSize {
                expected: info.nar_size,
                actual: size,
            }));
        }
        match read_u64(&mut self.reader).await? {
            1 => Ok(()),
            got => Err(ServeError::UnexpectedReply {
                command: "cmdAddToStoreNar",
                got,
            }),
        }
    }

    /// Sends `cmdExportPaths` for `paths` and copies the export stream the server answers with
    /// (references first) into `sink`, e.g. the stdin of a local `nix-store --import`; returns
    /// the paths it held. `sink` is flushed, not closed.
    ///
    /// Every path in the stream must be one of `paths`: a server sending another is stopped
    /// before that path's metadata reaches `sink` (see [`copy_export`]), so an importer cannot
    /// register it.
    ///
    /// # Errors
    /// When the stream fails or closes, is malformed or breaks the NAR limits, holds a path not
    /// asked for, or `sink` cannot be written ([`NarError::Write`] in [`ServeError::Archive`]).
    pub async fn export_paths<S: AsRef<str>, K: AsyncWrite + Unpin>(
        &mut self,
        paths: &[S],
        sink: &mut K,
    ) -> Result<Vec<StorePath>, ServeError> {
        let command = encode_export_paths(paths);
        send(&mut self.writer, &command).await?;
        let asked: HashSet<&str> = paths.iter().map(AsRef::as_ref).collect();
        let mut seen = HashSet::new();
        // Accepts each path asked for once: a repeated one would be a server bug or a trick.
        let accept = |path: &StorePath| asked.contains(path.as_str()) && seen.insert(path.clone());
        copy_export(&mut self.reader, sink, &self.nar_limits, accept)
            .await
            .map_err(|e| match e {
                NarError::Truncated => ServeError::Closed,
                NarError::Read(source) => ServeError::Io(source),
                other => ServeError::Archive(other),
            })
    }

    /// Builds `drv` (named `drv_path`, which need not be valid on the server) with
    /// `cmdBuildDerivation` and returns the result. Every path in `drv.input_srcs` must already
    /// be valid on the server. Not cancel-safe (see
    /// [`read_build_paths_reply`](Self::read_build_paths_reply)).
    ///
    /// # Errors
    /// When the stream fails or closes, or the reply is malformed. A failed build is an
    /// `Ok` result with a failure status.
    pub async fn build_derivation(
        &mut self,
        drv_path: &str,
        drv: &BasicDerivation,
        settings: &BuildSettings,
    ) -> Result<BuildResult, ServeError> {
        self.send_build_derivation(drv_path, drv, settings).await?;
        self.read_build_derivation_reply().await
    }

    /// Sends `cmdBuildDerivation` without waiting for the reply (see
    /// [`send_build_paths`](Self::send_build_paths) for why).
    ///
    /// # Errors
    /// When the stream cannot be written.
    pub async fn send_build_derivation(
        &mut self,
        drv_path: &str,
        drv: &BasicDerivation,
        settings: &BuildSettings,
    ) -> Result<(), ServeError> {
        let command = encode_build_derivation(drv_path, drv, settings, self.server_version);
        send(&mut self.writer, &command).await
    }

    /// Reads the reply to `cmdBuildDerivation`. Not cancel-safe (see
    /// [`read_build_paths_reply`](Self::read_build_paths_reply)).
    ///
    /// # Errors
    /// When the stream fails or closes, or the reply is malformed.
    pub async fn read_build_derivation_reply(&mut self) -> Result<BuildResult, ServeError> {
        read_build_result(&mut self.reader, self.server_version).await
    }

    /// Returns the reader and the writer.
    pub fn into_inner(self) -> (R, W) {
        (self.reader, self.writer)
    }
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> Result<(), ServeError> {
    writer.write_all(bytes).await.map_err(write_error)?;
    writer.flush().await.map_err(write_error)
}

fn write_error(source: std::io::Error) -> ServeError {
    if source.kind() == std::io::ErrorKind::BrokenPipe {
        ServeError::Closed
    } else {
        ServeError::Io(source)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{DuplexStream, ReadHalf, WriteHalf, duplex, split};

    use tokio::io::AsyncReadExt;

    use super::super::nar::testing::{export_record, file};
    use super::super::wire::{put_bytes, put_strings, read_string};
    use super::*;

    type Client = ServeClient<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>>;

    /// The server side of a duplex pipe, written as a tiny fake `nix-store --serve`.
    struct FakeServer {
        reader: ReadHalf<DuplexStream>,
        writer: WriteHalf<DuplexStream>,
    }

    impl FakeServer {
        async fn u64(&mut self) -> u64 {
            read_u64(&mut self.reader).await.unwrap()
        }

        async fn strings(&mut self) -> Vec<String> {
            read_strings(&mut self.reader).await.unwrap()
        }

        async fn send(&mut self, build: impl FnOnce(&mut Vec<u8>)) {
            let mut buf = Vec::new();
            build(&mut buf);
            self.writer.write_all(&buf).await.unwrap();
        }

        /// Answers the handshake with `version` and checks the client's version.
        async fn accept(&mut self, version: u64) {
            assert_eq!(self.u64().await, SERVE_MAGIC_1);
            self.send(|b| {
                put_u64(b, SERVE_MAGIC_2);
                put_u64(b, version);
            })
            .await;
            assert_eq!(self.u64().await, SERVE_PROTOCOL_VERSION);
        }
    }

    fn pipe() -> (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>, FakeServer) {
        let (client, server) = duplex(1 << 16);
        let (client_r, client_w) = split(client);
        let (server_r, server_w) = split(server);
        let server = FakeServer {
            reader: server_r,
            writer: server_w,
        };
        (client_r, client_w, server)
    }

    /// Runs `server` against a freshly connected client and returns both results.
    async fn with_server<T, F>(
        version: u64,
        server: impl FnOnce(FakeServer) -> F + Send + 'static,
        client: impl AsyncFnOnce(&mut Client) -> T,
    ) -> T
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (r, w, mut fake) = pipe();
        let serving = tokio::spawn(async move {
            fake.accept(version).await;
            server(fake).await;
        });
        let mut connected = ServeClient::handshake(r, w).await.unwrap();
        assert_eq!(connected.server_version(), version);
        let result = client(&mut connected).await;
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .unwrap()
            .unwrap();
        result
    }

    #[tokio::test]
    async fn build_paths_should_send_paths_and_settings_and_read_success() {
        let reply = with_server(
            0x207,
            |mut s| async move {
                assert_eq!(s.u64().await, 6);
                assert_eq!(s.strings().await, ["/nix/store/a.drv!out,dev"]);
                let settings: Vec<u64> = [
                    s.u64().await,
                    s.u64().await,
                    s.u64().await,
                    s.u64().await,
                    s.u64().await,
                    s.u64().await,
                ]
                .into();
                assert_eq!(settings, [7, 9, 0, 0, 0, 0]);
                s.send(|b| put_u64(b, 0)).await;
            },
            async |c| {
                let settings = BuildSettings {
                    max_silent_time: 7,
                    build_timeout: 9,
                    max_log_size: 0,
                };
                c.build_paths(&["/nix/store/a.drv!out,dev"], &settings)
                    .await
                    .unwrap()
            },
        )
        .await;
        assert_eq!(reply, BuildPathsReply::Built);
    }

    #[tokio::test]
    async fn build_paths_should_read_status_and_message_without_colours() {
        let reply = with_server(
            0x207,
            |mut s| async move {
                assert_eq!(s.u64().await, 6);
                s.strings().await;
                for _ in 0..6 {
                    s.u64().await;
                }
                s.send(|b| {
                    put_u64(b, 100);
                    put_bytes(
                        b,
                        b"\x1b[31;1merror:\x1b[0m builder for '\x1b[35;1m/nix/store/x.drv\x1b[0m' failed with exit code 3",
                    );
                })
                .await;
            },
            async |c| {
                c.build_paths(&["/nix/store/x.drv!out"], &BuildSettings::default())
                    .await
                    .unwrap()
            },
        )
        .await;
        assert_eq!(
            reply,
            BuildPathsReply::Failed {
                status: 100,
                message: "error: builder for '/nix/store/x.drv' failed with exit code 3".into(),
            }
        );
    }

    #[tokio::test]
    async fn build_paths_should_send_fewer_settings_to_an_older_server() {
        with_server(
            0x203,
            |mut s| async move {
                assert_eq!(s.u64().await, 6);
                s.strings().await;
                for _ in 0..5 {
                    s.u64().await;
                }
                // keepFailed is not sent to 2.3: the next word is already the next command.
                s.send(|b| put_u64(b, 0)).await;
                assert_eq!(s.u64().await, 1);
                s.u64().await;
                s.u64().await;
                s.strings().await;
                s.send(|b| put_strings::<&str>(b, &[])).await;
            },
            async |c| {
                c.build_paths(&["/nix/store/x.drv!out"], &BuildSettings::default())
                    .await
                    .unwrap();
                c.query_valid_paths(&["/nix/store/y"], false, false)
                    .await
                    .unwrap();
            },
        )
        .await;
    }

    #[tokio::test]
    async fn query_valid_paths_should_send_flags_and_return_the_valid_subset() {
        let valid = with_server(
            0x207,
            |mut s| async move {
                assert_eq!(s.u64().await, 1);
                assert_eq!((s.u64().await, s.u64().await), (1, 0));
                let asked = s.strings().await;
                assert_eq!(asked, ["/nix/store/a", "/nix/store/b"]);
                s.send(|b| put_strings(b, &["/nix/store/b"])).await;
            },
            async |c| {
                c.query_valid_paths(&["/nix/store/a", "/nix/store/b"], true, false)
                    .await
                    .unwrap()
            },
        )
        .await;
        assert_eq!(valid, ["/nix/store/b"]);
    }

    #[tokio::test]
    async fn commands_should_run_one_after_another_on_one_connection() {
        with_server(
            0x207,
            |mut s| async move {
                for status in [0u64, 101] {
                    assert_eq!(s.u64().await, 6);
                    s.strings().await;
                    for _ in 0..6 {
                        s.u64().await;
                    }
                    s.send(|b| {
                        put_u64(b, status);
                        if status != 0 {
                            put_bytes(b, b"error: timed out after 1 seconds");
                        }
                    })
                    .await;
                }
            },
            async |c| {
                let settings = BuildSettings::default();
                assert_eq!(
                    c.build_paths(&["/nix/store/a.drv!out"], &settings)
                        .await
                        .unwrap(),
                    BuildPathsReply::Built
                );
                let second = c.build_paths(&["/nix/store/b.drv!out"], &settings).await;
                assert!(
                    matches!(second, Ok(BuildPathsReply::Failed { status: 101, .. })),
                    "{second:?}"
                );
            },
        )
        .await;
    }

    const A: &str = "/nix/store/00000000000000000000000000000000-a";
    const B: &str = "/nix/store/11111111111111111111111111111111-b";

    fn export_stream(paths: &[&str]) -> Vec<u8> {
        let mut stream = Vec::new();
        for path in paths {
            export_record(&mut stream, path, &[]);
        }
        put_u64(&mut stream, 0);
        stream
    }

    #[tokio::test]
    async fn import_paths_should_send_one_export_stream_and_read_the_acknowledgement() {
        let stream = export_stream(&[A, B]);
        let expected = stream.clone();
        let imported = with_server(
            0x207,
            move |mut s| async move {
                assert_eq!(s.u64().await, 4);
                let mut got = vec![0u8; expected.len()];
                s.reader.read_exact(&mut got).await.unwrap();
                assert_eq!(got, expected);
                s.send(|b| put_u64(b, 1)).await;
            },
            async |c| {
                // Bytes after the stream are not sent.
                let mut input = stream.clone();
                input.extend_from_slice(b"not sent");
                let mut reader = input.as_slice();
                let paths = c.import_paths(&mut reader).await.unwrap();
                assert_eq!(reader, b"not sent");
                paths
            },
        )
        .await;
        assert_eq!(imported.len(), 2);
    }

    #[tokio::test]
    async fn import_paths_should_refuse_a_missing_acknowledgement() {
        let err = with_server(
            0x207,
            |mut s| async move {
                assert_eq!(s.u64().await, 4);
                let _ = copy_export(
                    &mut s.reader,
                    &mut Vec::new(),
                    &NarLimits::default(),
                    |_| true,
                )
                .await;
                s.send(|b| put_u64(b, 0)).await;
            },
            async |c| {
                let stream = export_stream(&[A]);
                c.import_paths(&mut stream.as_slice()).await.unwrap_err()
            },
        )
        .await;
        assert!(
            matches!(
                err,
                ServeError::UnexpectedReply {
                    command: "cmdImportPaths",
                    got: 0
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn export_paths_should_copy_the_paths_asked_for_and_refuse_others() {
        let (exported, refused) = with_server(
            0x207,
            |mut s| async move {
                for answer in [&[A][..], &[A, B]] {
                    assert_eq!((s.u64().await, s.u64().await), (5, 0));
                    assert_eq!(s.strings().await, [A]);
                    let stream = export_stream(answer);
                    s.send(|b| b.extend_from_slice(&stream)).await;
                }
            },
            async |c| {
                let mut sink = Vec::new();
                let exported = c.export_paths(&[A], &mut sink).await.unwrap();
                assert_eq!(sink, export_stream(&[A]));
                let refused = c.export_paths(&[A], &mut Vec::new()).await.unwrap_err();
                (exported, refused)
            },
        )
        .await;
        assert_eq!(exported, [StorePath::new(A).unwrap()]);
        assert!(
            matches!(&refused, ServeError::Archive(NarError::UnexpectedPath { path }) if path.as_str() == B),
            "{refused:?}"
        );
    }

    fn nar_info(nar: &[u8]) -> NarInfo {
        NarInfo {
            path: A.into(),
            nar_hash: "sha256-x".into(),
            nar_size: nar.len() as u64,
            ..NarInfo::default()
        }
    }

    #[tokio::test]
    async fn add_to_store_nar_should_send_the_info_then_exactly_the_nar() {
        let nar = file(b"contents");
        let info = nar_info(&nar);
        let (header, expected) = (encode_add_to_store_nar(&info), nar.clone());
        with_server(
            0x207,
            move |mut s| async move {
                let mut got = vec![0u8; header.len() + expected.len()];
                s.reader.read_exact(&mut got).await.unwrap();
                assert_eq!(got[..header.len()], header);
                assert_eq!(got[header.len()..], expected);
                s.send(|b| put_u64(b, 1)).await;
            },
            async |c| {
                let mut input = nar.clone();
                input.extend_from_slice(b"not sent");
                let mut reader = input.as_slice();
                c.add_to_store_nar(&info, &mut reader).await.unwrap();
                assert_eq!(reader, b"not sent");
            },
        )
        .await;
    }

    #[tokio::test]
    async fn add_to_store_nar_should_never_send_more_than_the_announced_size() {
        let nar = file(b"contents");
        for announced in [nar.len() as u64 - 8, nar.len() as u64 + 8] {
            let info = NarInfo {
                nar_size: announced,
                ..nar_info(&nar)
            };
            let header = encode_add_to_store_nar(&info).len();
            let err = with_server(
                0x207,
                move |mut s| async move {
                    let mut got = Vec::new();
                    s.reader.read_to_end(&mut got).await.unwrap();
                    assert!(got.len() as u64 <= header as u64 + announced);
                },
                async |c| {
                    let err = c.add_to_store_nar(&info, &mut nar.as_slice()).await;
                    // The connection is unusable: close it, as a caller drops it.
                    c.writer.shutdown().await.unwrap();
                    err.unwrap_err()
                },
            )
            .await;
            let expected = if announced < nar.len() as u64 {
                matches!(err, ServeError::Archive(NarError::TooLarge { .. }))
            } else {
                matches!(err, ServeError::Archive(NarError::WrongSize { .. }))
            };
            assert!(expected, "{announced}: {err:?}");
        }
    }

    #[tokio::test]
    async fn add_to_store_nar_should_refuse_a_server_older_than_2_5_without_sending() {
        let nar = file(b"contents");
        let err = with_server(
            0x204,
            |mut s| async move {
                let mut got = Vec::new();
                s.reader.read_to_end(&mut got).await.unwrap();
                assert!(got.is_empty(), "{got:?}");
            },
            async |c| {
                assert!(!c.supports_add_to_store_nar());
                let err = c
                    .add_to_store_nar(&nar_info(&nar), &mut nar.as_slice())
                    .await
                    .unwrap_err();
                c.writer.shutdown().await.unwrap();
                err
            },
        )
        .await;
        assert!(
            matches!(err, ServeError::UnsupportedVersion { version: 0x204 }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn query_closure_should_send_the_flag_and_return_the_closure() {
        let closure = with_server(
            0x207,
            |mut s| async move {
                assert_eq!((s.u64().await, s.u64().await), (7, 1));
                assert_eq!(s.strings().await, [B]);
                s.send(|b| put_strings(b, &[A, B])).await;
            },
            async |c| c.query_closure(&[B], true).await.unwrap(),
        )
        .await;
        assert_eq!(closure, [A, B]);
    }

    #[tokio::test]
    async fn read_build_paths_reply_should_report_a_server_that_went_away() {
        let err = with_server(
            0x207,
            |s| async move { drop(s) },
            async |c| {
                // The send may or may not see the closed pipe; the reply cannot come.
                let _ = c
                    .send_build_paths(&["/nix/store/a.drv!out"], &BuildSettings::default())
                    .await;
                c.read_build_paths_reply().await.unwrap_err()
            },
        )
        .await;
        assert!(matches!(err, ServeError::Closed), "{err:?}");
    }

    #[tokio::test]
    async fn handshake_should_refuse_a_server_with_the_wrong_magic_or_version() {
        for (magic, version) in [(0x1234, 0x207), (SERVE_MAGIC_2, 0x307)] {
            let (r, w, mut fake) = pipe();
            tokio::spawn(async move {
                fake.u64().await;
                fake.send(|b| {
                    put_u64(b, magic);
                    put_u64(b, version);
                })
                .await;
                // Keep the pipe open until the client has decided.
                let _ = read_string(&mut fake.reader).await;
            });
            let err = ServeClient::handshake(r, w).await.unwrap_err();
            if magic == SERVE_MAGIC_2 {
                assert!(
                    matches!(err, ServeError::UnsupportedVersion { version: 0x307 }),
                    "{err:?}"
                );
            } else {
                assert!(
                    matches!(err, ServeError::BadMagic { got: 0x1234 }),
                    "{err:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn handshake_should_report_a_server_that_closes_at_once() {
        let (r, w, fake) = pipe();
        drop(fake);
        let err = ServeClient::handshake(r, w).await.unwrap_err();
        assert!(matches!(err, ServeError::Closed), "{err:?}");
    }
}
