//! `serve::build_remote` against the real Nix on this machine, with two chroot stores that share
//! nothing: LOCAL (the coordinator's, through `NixCli::with_store`) and REMOTE (served by a
//! spawned `nix-store --serve --write --store REMOTE`, whose stdin and stdout are the
//! connection and whose stderr is the build log). Also the NAR walker on archives written by
//! `nix-store --dump`. These tests never skip: without Nix they fail and say how to install it.
//!
//! Every expression carries a random salt, so each run creates new derivations.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: clippy's allow-*-in-tests only covers #[test] functions"
)]

mod common;

use common::{NIX_MISSING, require_nix, salt, within};

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reconix_nixcli::NixCli;
use reconix_nixcli::serve::nar::{NarError, NarLimits, copy_export, copy_nar};
use reconix_nixcli::serve::{
    BuildResultStatus, BuildSettings, RemoteBuildOutcome, RemoteBuildStatus, ServeClient,
    build_remote,
};
use reconix_spec::names::StorePath;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// Runs a command that must succeed and returns its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Two empty chroot stores and an expression with a salt, instantiated into LOCAL on demand.
///
/// Packages: `a` (no inputs), `b` (reads `a`, links to it: its output references `a`), `c`
/// (reads `a`, no reference), `fail` (reads `a`, exits 7), `sleeper` (sleeps 30 s).
struct Lab {
    dir: TempDir,
    nix: NixCli,
}

impl Lab {
    fn new() -> Self {
        require_nix();
        let dir = tempfile::Builder::new()
            .prefix("reconix-remote-")
            .tempdir()
            .unwrap();
        let salt = salt();
        let expr = format!(
            r#"let
  system = "x86_64-linux";
  salt = "{salt}";
  mk = name: script: derivation {{ inherit name system salt; builder = "/bin/sh"; args = [ "-c" script ]; }};
  a = mk "a" "echo building-a; echo a-content > $out";
  b = mk "b" "echo building-b; read x < ${{a}}; mkdir $out; echo \"b-uses-$x\" > $out/f; ln -s ${{a}} $out/a";
  c = mk "c" "echo building-c; read x < ${{a}}; echo \"c-uses-$x\" > $out";
  fail = mk "fail" "read x < ${{a}}; echo about-to-fail; exit 7";
  sleeper = mk "sleeper" "echo sleeping; sleep 30; touch $out";
in {{ inherit a b c fail sleeper; }}
"#
        );
        std::fs::write(dir.path().join("default.nix"), expr).unwrap();
        let nix = NixCli::new().with_store(dir.path().join("local").as_os_str());
        Self { dir, nix }
    }

    fn store(&self, which: &str) -> String {
        self.dir.path().join(which).display().to_string()
    }

    /// Instantiates `attr` into LOCAL and returns its derivation.
    fn drv(&self, attr: &str) -> StorePath {
        let file = self.dir.path().join("default.nix").display().to_string();
        let local = self.store("local");
        let out = run("nix-instantiate", &["--store", &local, &file, "-A", attr]);
        StorePath::new(out.trim()).unwrap()
    }

    /// Builds `drv` in LOCAL and returns its output.
    fn build_locally(&self, drv: &StorePath) -> StorePath {
        let local = self.store("local");
        let out = run("nix-store", &["--store", &local, "--realise", drv.as_str()]);
        StorePath::new(out.trim()).unwrap()
    }

    fn valid(&self, which: &str, path: &StorePath) -> bool {
        Command::new("nix-store")
            .args([
                "--store",
                &self.store(which),
                "--check-validity",
                path.as_str(),
            ])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    fn closure(&self, which: &str, path: &StorePath) -> BTreeSet<String> {
        let out = run(
            "nix-store",
            &[
                "--store",
                &self.store(which),
                "--query",
                "--requisites",
                path.as_str(),
            ],
        );
        out.lines().map(str::to_owned).collect()
    }

    /// Starts `nix-store --serve --write --store REMOTE` and performs the handshake.
    async fn serve(&self) -> Remote {
        let mut child = tokio::process::Command::new("nix-store")
            .args(["--serve", "--write", "--store", &self.store("remote")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect(NIX_MISSING);
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let log = tokio::spawn(async move {
            let mut log = Vec::new();
            stderr.read_to_end(&mut log).await.unwrap();
            String::from_utf8_lossy(&log).into_owned()
        });
        let client = within(ServeClient::handshake(BufReader::new(stdout), stdin))
            .await
            .unwrap();
        Remote { client, child, log }
    }
}

/// A connection to the REMOTE store's serve process.
struct Remote {
    client: ServeClient<BufReader<ChildStdout>, ChildStdin>,
    child: Child,
    log: tokio::task::JoinHandle<String>,
}

impl Remote {
    async fn build(
        &mut self,
        lab: &Lab,
        drv: &StorePath,
        settings: &BuildSettings,
    ) -> RemoteBuildOutcome {
        within(build_remote(&mut self.client, &lab.nix, drv, settings))
            .await
            .unwrap()
    }

    /// Closes the connection, waits for the server to exit and returns its stderr: the log.
    async fn finish(self) -> String {
        let Self {
            client,
            mut child,
            log,
        } = self;
        drop(client.into_inner());
        let status = within(child.wait()).await.unwrap();
        assert!(status.success(), "serve process: {status}");
        within(log).await.unwrap()
    }
}

fn path(p: &str) -> StorePath {
    StorePath::new(p).unwrap()
}

#[tokio::test]
async fn build_remote_should_copy_inputs_build_remotely_and_copy_the_closure_back() {
    let lab = Lab::new();
    let (a, b) = (lab.drv("a"), lab.drv("b"));
    let a_out = lab.build_locally(&a);
    let mut remote = lab.serve().await;

    let outcome = remote.build(&lab, &b, &BuildSettings::default()).await;

    assert_eq!(outcome.status, RemoteBuildStatus::Built, "{outcome:?}");
    assert_eq!(outcome.times_built, 1);
    let b_out = outcome.outputs["out"].clone();
    // Only the dependency's output went over, not the .drv files.
    assert_eq!(outcome.copied_to_remote, std::slice::from_ref(&a_out));
    assert!(!lab.valid("remote", &a) && !lab.valid("remote", &b));
    // The output is valid in both stores, with its full closure locally.
    assert!(lab.valid("remote", &b_out));
    assert!(lab.valid("remote", &a_out));
    assert_eq!(outcome.copied_back, std::slice::from_ref(&b_out));
    let expected: BTreeSet<String> = [a_out.to_string(), b_out.to_string()].into();
    assert_eq!(lab.closure("local", &b_out), expected);
    run(
        "nix-store",
        &[
            "--store",
            &lab.store("local"),
            "--verify-path",
            b_out.as_str(),
        ],
    );
    let file = lab
        .dir
        .path()
        .join("local")
        .join(&b_out.as_str()[1..])
        .join("f");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "b-uses-a-content\n");

    let log = remote.finish().await;
    assert!(log.contains("building-b"), "{log}");
    assert!(
        !log.contains("building-a"),
        "the dependency was rebuilt: {log}"
    );
    eprintln!(
        "phase timings for a trivial derivation: {:?}",
        outcome.timings
    );
}

#[tokio::test]
async fn build_remote_should_report_a_failing_builder_and_import_nothing() {
    let lab = Lab::new();
    let (a, fail) = (lab.drv("a"), lab.drv("fail"));
    let a_out = lab.build_locally(&a);
    let mut remote = lab.serve().await;

    let outcome = remote.build(&lab, &fail, &BuildSettings::default()).await;

    let RemoteBuildStatus::Failed { status, message } = &outcome.status else {
        panic!("{outcome:?}");
    };
    assert_eq!(*status, BuildResultStatus::PermanentFailure);
    assert!(message.contains("failed with exit code 7"), "{message}");
    assert!(message.contains(fail.as_str()), "{message}");
    assert!(!message.contains('\x1b'), "{message:?}");
    assert_eq!(outcome.copied_to_remote, [a_out]);
    assert!(outcome.copied_back.is_empty());
    let out = outcome.outputs["out"].clone();
    assert!(!lab.valid("local", &out) && !lab.valid("remote", &out));
    // The connection is still usable after a failed build.
    let again = remote
        .build(&lab, &lab.drv("c"), &BuildSettings::default())
        .await;
    assert_eq!(again.status, RemoteBuildStatus::Built, "{again:?}");
    let log = remote.finish().await;
    assert!(log.contains("about-to-fail"), "{log}");
}

#[tokio::test]
async fn build_remote_should_report_a_build_timeout() {
    let lab = Lab::new();
    let sleeper = lab.drv("sleeper");
    let mut remote = lab.serve().await;
    let settings = BuildSettings {
        build_timeout: 2,
        ..BuildSettings::default()
    };

    let started = Instant::now();
    let outcome = remote.build(&lab, &sleeper, &settings).await;

    let RemoteBuildStatus::TimedOut { message } = &outcome.status else {
        panic!("{outcome:?}");
    };
    assert!(message.contains("timed out after 2 seconds"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(outcome.copied_to_remote.is_empty() && outcome.copied_back.is_empty());
    assert!(!lab.valid("local", &outcome.outputs["out"]));
    let log = remote.finish().await;
    assert!(log.contains("sleeping"), "{log}");
}

#[tokio::test]
async fn build_remote_should_reuse_one_connection_and_skip_inputs_the_builder_has() {
    let lab = Lab::new();
    let (a, b, c) = (lab.drv("a"), lab.drv("b"), lab.drv("c"));
    let a_out = lab.build_locally(&a);
    let mut remote = lab.serve().await;
    let pid = remote.child.id();

    let first = remote.build(&lab, &b, &BuildSettings::default()).await;
    let second = remote.build(&lab, &c, &BuildSettings::default()).await;
    let third = remote.build(&lab, &b, &BuildSettings::default()).await;

    assert_eq!(first.status, RemoteBuildStatus::Built, "{first:?}");
    assert_eq!(first.copied_to_remote, std::slice::from_ref(&a_out));
    // c needs a too, which the builder got for b.
    assert_eq!(second.status, RemoteBuildStatus::Built, "{second:?}");
    assert!(second.copied_to_remote.is_empty(), "{second:?}");
    assert_eq!(second.copied_back, [second.outputs["out"].clone()]);
    assert_eq!(second.times_built, 1);
    // b again: valid on both sides, nothing built or copied.
    assert_eq!(third.status, RemoteBuildStatus::Built, "{third:?}");
    assert_eq!(third.times_built, 0);
    assert!(third.copied_to_remote.is_empty() && third.copied_back.is_empty());
    // One process, one handshake, all along.
    assert_eq!(remote.child.id(), pid);
    assert!(remote.child.try_wait().unwrap().is_none());
    let log = remote.finish().await;
    assert_eq!(log.matches("building-b").count(), 1, "{log}");
    assert_eq!(log.matches("building-c").count(), 1, "{log}");
}

#[tokio::test]
async fn build_remote_should_refuse_inputs_that_are_not_built_locally() {
    let lab = Lab::new();
    let b = lab.drv("b");
    let mut remote = lab.serve().await;
    let err = within(build_remote(
        &mut remote.client,
        &lab.nix,
        &b,
        &BuildSettings::default(),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(err, reconix_nixcli::Error::InvalidPath { .. }),
        "{err:?}"
    );
    remote.finish().await;
}

/// A directory tree with every kind of NAR node, dumped with `nix-store --dump`.
fn dumped_tree() -> (TempDir, Vec<u8>) {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    std::fs::create_dir_all(root.join("sub/deeper/deepest")).unwrap();
    std::fs::write(root.join("hello"), "hello\n").unwrap();
    std::fs::write(root.join("empty"), "").unwrap();
    std::fs::write(root.join("sub/deeper/deepest/big"), vec![b'x'; 200_001]).unwrap();
    let script = root.join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    std::os::unix::fs::symlink("hello", root.join("link")).unwrap();
    std::os::unix::fs::symlink("../hello", root.join("sub/up")).unwrap();
    let nar = dump(&root);
    (dir, nar)
}

fn dump(path: &Path) -> Vec<u8> {
    let out = Command::new("nix-store")
        .arg("--dump")
        .arg(path)
        .output()
        .expect(NIX_MISSING);
    assert!(out.status.success());
    out.stdout
}

async fn copy(input: &[u8]) -> Result<(u64, Vec<u8>), NarError> {
    let mut reader = input;
    let mut out = Vec::new();
    let size = copy_nar(&mut reader, &mut out, &NarLimits::default()).await?;
    Ok((size, out))
}

#[tokio::test]
async fn copy_nar_should_copy_dumped_files_executables_symlinks_and_nested_directories() {
    let (dir, nar) = dumped_tree();
    let mut input = nar.clone();
    input.extend_from_slice(b"after");
    let mut reader = input.as_slice();
    let mut out = Vec::new();
    let size = copy_nar(&mut reader, &mut out, &NarLimits::default())
        .await
        .unwrap();
    assert_eq!(size, nar.len() as u64);
    assert_eq!(out, nar);
    assert_eq!(reader, b"after");
    // Single-node archives: a regular file, an executable, a symlink.
    for single in ["tree/hello", "tree/run.sh", "tree/link", "tree/empty"] {
        let nar = dump(&dir.path().join(single));
        let (size, out) = copy(&nar).await.unwrap();
        assert_eq!((size, out), (nar.len() as u64, nar), "{single}");
    }
}

#[tokio::test]
async fn copy_nar_should_refuse_a_truncated_dump() {
    let (_dir, nar) = dumped_tree();
    for cut in [0, 7, 8, 100, nar.len() / 2, nar.len() - 8, nar.len() - 1] {
        let err = copy(&nar[..cut]).await.unwrap_err();
        assert!(matches!(err, NarError::Truncated), "cut at {cut}: {err:?}");
    }
}

#[tokio::test]
async fn copy_nar_should_refuse_absurd_lengths_in_a_dump_without_reading_them() {
    let (dir, _) = dumped_tree();
    let nar = dump(&dir.path().join("tree/hello"));
    // The word after the "contents" token is the file's length.
    let at = nar.windows(8).position(|w| w == b"contents").unwrap() + 8;
    for (len, limit) in [(1u64 << 62, u64::MAX >> 1), (1 << 20, 1 << 10)] {
        let mut bad = nar.clone();
        bad[at..at + 8].copy_from_slice(&len.to_le_bytes());
        let limits = NarLimits {
            max_nar_size: limit.min(NarLimits::default().max_nar_size),
            ..NarLimits::default()
        };
        let mut out = Vec::new();
        let err = copy_nar(&mut bad.as_slice(), &mut out, &limits)
            .await
            .unwrap_err();
        assert!(matches!(err, NarError::TooLarge { .. }), "{err:?}");
        // Nothing of the file was copied: only the tokens before its length.
        assert!(out.len() <= at + 8, "{}", out.len());
    }
    // A token announcing 2^63 bytes where "nix-archive-1" belongs.
    let mut bad = nar.clone();
    bad[..8].copy_from_slice(&(1u64 << 63).to_le_bytes());
    let err = copy(&bad).await.unwrap_err();
    assert!(matches!(err, NarError::TooLong { .. }), "{err:?}");
}

#[tokio::test]
async fn copy_export_should_pass_a_real_export_stream_through_unchanged() {
    let lab = Lab::new();
    let b = lab.drv("b");
    let a = lab.drv("a");
    let export = Command::new("nix-store")
        .args([
            "--store",
            &lab.store("local"),
            "--export",
            b.as_str(),
            a.as_str(),
        ])
        .output()
        .unwrap();
    assert!(export.status.success());
    let mut out = Vec::new();
    let paths = copy_export(
        &mut export.stdout.as_slice(),
        &mut out,
        &NarLimits::default(),
        |_| true,
    )
    .await
    .unwrap();
    // References first, whatever the order asked for.
    assert_eq!(paths, [path(a.as_str()), path(b.as_str())]);
    assert_eq!(out, export.stdout);
    // A stream with a path that was not asked for stops before that path's metadata.
    let mut out = Vec::new();
    let err = copy_export(
        &mut export.stdout.as_slice(),
        &mut out,
        &NarLimits::default(),
        |p| *p == a,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, NarError::UnexpectedPath { .. }), "{err:?}");
    assert!(out.len() < export.stdout.len());
}
