//! `build_remote` against the real Nix on this machine, with two chroot stores that share
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

use common::{NIX_MISSING, collect_until, require_nix, salt, within};

use std::collections::BTreeSet;
use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use reconix_nixcli::serve::nar::{NarError, NarLimits, copy_export, copy_nar};
use reconix_nixcli::serve::{
    BuildResultStatus, BuildSettings, RemoteBuildOutcome, RemoteBuildStatus, ServeClient,
};
use reconix_nixcli::{Nix, NixCli, build_remote};
use reconix_spec::names::StorePath;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWrite, BufReader};
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
/// (reads `a`, no reference), `fail` (reads `a`, exits 7), `sleeper` (sleeps 30 s); and for
/// intermediate derivations (never built locally): `i` (reads `a`, no reference), `d` (links
/// to `i`: its output references `i`'s), `dfail` (uses `ifail`, which reads `a` and exits 5),
/// `dsleep` (uses `sleeper`); and for large inputs: `big` (a tree with a 9 MiB file, an
/// executable and symlinks, referencing `a`), `big2` (a 9 MiB file and a link to `big`) and
/// `usesbig` (reads both).
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
  i = mk "i" "echo building-i; read x < ${{a}}; mkdir $out; echo \"i-uses-$x\" > $out/f";
  d = mk "d" "echo building-d; mkdir $out; ln -s ${{i}} $out/i; cat ${{i}}/f > $out/f";
  ifail = mk "ifail" "read x < ${{a}}; echo intermediate-fails; exit 5";
  dfail = mk "dfail" "echo building-dfail; echo ${{ifail}} > $out";
  dsleep = mk "dsleep" "echo building-dsleep; echo ${{sleeper}} > $out";
  big = mk "big" "mkdir -p $out/sub; head -c 9437184 /dev/urandom > $out/sub/data; echo hi > $out/run; chmod +x $out/run; ln -s sub/data $out/link; echo ${{a}} > $out/a";
  big2 = mk "big2" "mkdir $out; head -c 9437190 /dev/urandom > $out/data; ln -s ${{big}} $out/big";
  usesbig = mk "usesbig" "echo building-usesbig; test -f ${{big2}}/big/sub/data; wc -c < ${{big2}}/data > $out";
in {{ inherit a b c fail sleeper i d ifail dfail dsleep big big2 usesbig; }}
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

    /// The output of `drv` (valid or not) in LOCAL.
    fn output(&self, drv: &StorePath) -> StorePath {
        let local = self.store("local");
        let out = run(
            "nix-store",
            &["--store", &local, "--query", "--outputs", drv.as_str()],
        );
        path(out.trim())
    }

    fn verify(&self, which: &str, path: &StorePath) {
        run(
            "nix-store",
            &[
                "--store",
                &self.store(which),
                "--verify-path",
                path.as_str(),
            ],
        );
    }

    /// Starts `nix-store --serve --write --store REMOTE` and performs the handshake.
    async fn serve(&self) -> Remote {
        let (child, stdout, stdin, log) = self.spawn_serve();
        let client = within(ServeClient::handshake(BufReader::new(stdout), stdin))
            .await
            .unwrap();
        Remote { client, child, log }
    }

    /// Starts `nix-store --serve --write --store REMOTE`, reading its stderr (the log) to the end.
    fn spawn_serve(
        &self,
    ) -> (
        Child,
        ChildStdout,
        ChildStdin,
        tokio::task::JoinHandle<String>,
    ) {
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
        (child, stdout, stdin, log)
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
        within(build_remote(
            &mut self.client,
            &lab.nix,
            drv,
            settings,
            None,
        ))
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
async fn build_remote_should_stream_large_inputs_with_add_to_store_nar_references_first() {
    let lab = Lab::new();
    let a_out = lab.build_locally(&lab.drv("a"));
    let big_out = lab.build_locally(&lab.drv("big"));
    let big2_out = lab.build_locally(&lab.drv("big2"));
    let mut remote = lab.serve().await;
    assert!(remote.client.supports_add_to_store_nar());

    let outcome = remote
        .build(&lab, &lab.drv("usesbig"), &BuildSettings::default())
        .await;

    assert_eq!(outcome.status, RemoteBuildStatus::Built, "{outcome:?}");
    // `a` in an export batch, flushed before `big` (which references it), then the two
    // large paths one by one.
    assert_eq!(outcome.copied_to_remote, [a_out, big_out, big2_out.clone()]);
    for sent in &outcome.copied_to_remote {
        assert!(lab.valid("remote", sent), "{sent}");
        lab.verify("remote", sent);
    }
    assert_eq!(
        lab.closure("remote", &big2_out),
        lab.closure("local", &big2_out)
    );
    let file = lab
        .dir
        .path()
        .join("local")
        .join(&outcome.outputs["out"].as_str()[1..]);
    assert_eq!(std::fs::read_to_string(file).unwrap().trim(), "9437190");
    let log = remote.finish().await;
    assert!(log.contains("building-usesbig"), "{log}");
}

#[tokio::test]
async fn build_remote_should_stream_large_inputs_through_nix_when_the_store_is_a_url() {
    let lab = Lab::new();
    lab.build_locally(&lab.drv("a"));
    let big_out = lab.build_locally(&lab.drv("big"));
    let big2_out = lab.build_locally(&lab.drv("big2"));
    // The store's files are not read directly: each large path comes from `nix store dump-path`.
    let nix = NixCli::new().with_store(format!("local?root={}", lab.store("local")));
    let mut remote = lab.serve().await;

    let outcome = within(build_remote(
        &mut remote.client,
        &nix,
        &lab.drv("usesbig"),
        &BuildSettings::default(),
        None,
    ))
    .await
    .unwrap();

    assert_eq!(outcome.status, RemoteBuildStatus::Built, "{outcome:?}");
    assert_eq!(outcome.copied_to_remote.len(), 3, "{outcome:?}");
    for sent in [&big_out, &big2_out] {
        assert!(lab.valid("remote", sent), "{sent}");
        lab.verify("remote", sent);
    }
    assert!(lab.valid("local", &outcome.outputs["out"]));
    remote.finish().await;
}

#[tokio::test]
async fn build_remote_should_fail_when_a_large_input_no_longer_matches_its_hash() {
    let lab = Lab::new();
    lab.build_locally(&lab.drv("a"));
    let big_out = lab.build_locally(&lab.drv("big"));
    let big2_out = lab.build_locally(&lab.drv("big2"));
    // Corrupt one byte of big2's file in LOCAL: same size, another hash.
    let data = lab
        .dir
        .path()
        .join("local")
        .join(&big2_out.as_str()[1..])
        .join("data");
    let dir = data.parent().unwrap();
    let mut perms = std::fs::metadata(dir).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir, perms.clone()).unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&data, perms).unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let mut remote = lab.serve().await;

    let result = within(build_remote(
        &mut remote.client,
        &lab.nix,
        &lab.drv("usesbig"),
        &BuildSettings::default(),
        None,
    ))
    .await;

    assert!(
        matches!(result, Err(reconix_nixcli::Error::Serve { .. })),
        "{result:?}"
    );
    // The builder refused it (and exited); what came before is there.
    assert!(lab.valid("remote", &big_out));
    assert!(!lab.valid("remote", &big2_out));
    let Remote { client, child, log } = remote;
    drop(client);
    drop(child);
    let log = within(log).await.unwrap();
    assert!(log.contains("hash mismatch"), "{result:?} {log}");
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
async fn build_remote_should_build_intermediate_derivations_remotely_and_copy_their_outputs_back() {
    let lab = Lab::new();
    let (a, i, d) = (lab.drv("a"), lab.drv("i"), lab.drv("d"));
    let a_out = lab.build_locally(&a);
    let (i_out, d_out) = (lab.output(&i), lab.output(&d));
    assert!(!lab.valid("local", &i_out));
    let mut remote = lab.serve().await;

    let outcome = remote.build(&lab, &d, &BuildSettings::default()).await;

    assert_eq!(outcome.status, RemoteBuildStatus::Built, "{outcome:?}");
    assert_eq!(outcome.outputs["out"], d_out);
    assert_eq!(outcome.times_built, 1);
    // The .drv closure went over with the output built already, not the one to build.
    let sent: BTreeSet<&StorePath> = outcome.copied_to_remote.iter().collect();
    assert_eq!(sent, [&a, &i, &d, &a_out].into_iter().collect());
    let position = |p: &StorePath| outcome.copied_to_remote.iter().position(|s| s == p);
    assert!(position(&a) < position(&i) && position(&i) < position(&d));
    // d's output references i's: both came back, references first, and are sound.
    assert_eq!(outcome.copied_back, [i_out.clone(), d_out.clone()]);
    for out in [&i_out, &d_out] {
        assert!(lab.valid("local", out), "{out}");
        lab.verify("local", out);
    }
    let expected: BTreeSet<String> = [i_out.to_string(), d_out.to_string()].into();
    assert_eq!(lab.closure("local", &d_out), expected);
    let file = lab
        .dir
        .path()
        .join("local")
        .join(&d_out.as_str()[1..])
        .join("f");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "i-uses-a-content\n");

    // Again on the same connection: everything is in place, nothing is built or copied.
    let again = remote.build(&lab, &d, &BuildSettings::default()).await;
    assert_eq!(again.status, RemoteBuildStatus::Built, "{again:?}");
    assert_eq!(again.times_built, 0);
    assert!(again.copied_to_remote.is_empty() && again.copied_back.is_empty());

    let log = remote.finish().await;
    assert_eq!(log.matches("building-i").count(), 1, "{log}");
    assert_eq!(log.matches("building-d").count(), 1, "{log}");
    assert!(!log.contains("building-a"), "a was rebuilt: {log}");
}

#[tokio::test]
async fn build_remote_should_report_a_failing_intermediate_derivation_and_import_nothing() {
    let lab = Lab::new();
    let (a, ifail, dfail) = (lab.drv("a"), lab.drv("ifail"), lab.drv("dfail"));
    lab.build_locally(&a);
    let mut remote = lab.serve().await;

    let outcome = remote.build(&lab, &dfail, &BuildSettings::default()).await;

    let RemoteBuildStatus::Failed { status, message } = &outcome.status else {
        panic!("{outcome:?}");
    };
    assert_eq!(*status, BuildResultStatus::DependencyFailed, "{message}");
    assert!(!outcome.status.is_transient());
    assert!(message.contains(dfail.as_str()), "{message}");
    assert!(
        !message.starts_with("error") && !message.contains('\x1b'),
        "{message:?}"
    );
    assert!(outcome.copied_back.is_empty());
    for out in [lab.output(&ifail), lab.output(&dfail)] {
        assert!(
            !lab.valid("local", &out) && !lab.valid("remote", &out),
            "{out}"
        );
    }
    // The connection is still usable after a failed build.
    let again = remote
        .build(&lab, &lab.drv("d"), &BuildSettings::default())
        .await;
    assert_eq!(again.status, RemoteBuildStatus::Built, "{again:?}");
    let log = remote.finish().await;
    assert!(log.contains("intermediate-fails"), "{log}");
    assert!(!log.contains("building-dfail"), "{log}");
}

#[tokio::test]
async fn build_remote_should_report_an_intermediate_derivation_that_times_out() {
    let lab = Lab::new();
    let dsleep = lab.drv("dsleep");
    let mut remote = lab.serve().await;
    let settings = BuildSettings {
        build_timeout: 2,
        ..BuildSettings::default()
    };

    let started = Instant::now();
    let outcome = remote.build(&lab, &dsleep, &settings).await;

    let RemoteBuildStatus::TimedOut { message } = &outcome.status else {
        panic!("{outcome:?}");
    };
    // The message is about the top derivation; the intermediate's own went to the log.
    assert!(message.contains(dsleep.as_str()), "{message}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(outcome.copied_back.is_empty());
    assert!(!lab.valid("local", &outcome.outputs["out"]));
    let log = remote.finish().await;
    assert!(log.contains("timed out after 2 seconds"), "{log}");
}

#[tokio::test]
async fn build_remote_should_refuse_a_closure_path_that_no_derivation_of_the_closure_produces() {
    use reconix_nixcli::serve::wire::{
        SERVE_MAGIC_2, put_strings, put_u64, read_strings, read_u64,
    };
    use tokio::io::AsyncWriteExt;

    let lab = Lab::new();
    let (i, d) = (lab.drv("i"), lab.drv("d"));
    let (i_out, d_out) = (lab.output(&i), lab.output(&d));
    let stray = "/nix/store/00000000000000000000000000000000-stray";
    // A lying builder: it has everything, builds nothing, and names a stray path in the
    // outputs' closure.
    let (client_end, server_end) = tokio::io::duplex(1 << 16);
    let (mut r, mut w) = tokio::io::split(server_end);
    let closure = vec![d_out.to_string(), i_out.to_string(), stray.to_owned()];
    let server = tokio::spawn(async move {
        let mut reply = Vec::new();
        read_u64(&mut r).await.unwrap();
        put_u64(&mut reply, SERVE_MAGIC_2);
        put_u64(&mut reply, 0x207);
        w.write_all(&reply).await.unwrap();
        read_u64(&mut r).await.unwrap();
        assert_eq!(read_u64(&mut r).await.unwrap(), 1, "cmdQueryValidPaths");
        read_u64(&mut r).await.unwrap();
        read_u64(&mut r).await.unwrap();
        let asked = read_strings(&mut r).await.unwrap();
        let mut reply = Vec::new();
        put_strings(&mut reply, &asked);
        w.write_all(&reply).await.unwrap();
        assert_eq!(read_u64(&mut r).await.unwrap(), 6, "cmdBuildPaths");
        let targets = read_strings(&mut r).await.unwrap();
        for _ in 0..6 {
            read_u64(&mut r).await.unwrap();
        }
        let mut reply = Vec::new();
        put_u64(&mut reply, 0);
        w.write_all(&reply).await.unwrap();
        assert_eq!(read_u64(&mut r).await.unwrap(), 7, "cmdQueryClosure");
        read_u64(&mut r).await.unwrap();
        read_strings(&mut r).await.unwrap();
        let mut reply = Vec::new();
        put_strings(&mut reply, &closure);
        w.write_all(&reply).await.unwrap();
        // Nothing more: no export is asked for.
        let next = read_u64(&mut r).await;
        assert!(next.is_err(), "{next:?}");
        targets
    });
    let (cr, cw) = tokio::io::split(client_end);
    let mut client = within(ServeClient::handshake(BufReader::new(cr), cw))
        .await
        .unwrap();

    let err = within(build_remote(
        &mut client,
        &lab.nix,
        &d,
        &BuildSettings::default(),
        None,
    ))
    .await
    .unwrap_err();

    assert!(
        matches!(&err, reconix_nixcli::Error::Serve { message, .. } if message.contains(stray)),
        "{err:?}"
    );
    drop(client);
    let targets = within(server).await.unwrap();
    assert_eq!(targets, [format!("{d}!out")]);
    assert!(!lab.valid("local", &d_out) && !lab.valid("local", &i_out));
}

/// A writer that is `Send` but not `Sync`, like the agent's `ServeWriter`.
struct SendOnlyWriter(Pin<Box<dyn AsyncWrite + Send>>);

impl AsyncWrite for SendOnlyWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().0.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().0.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().0.as_mut().poll_shutdown(cx)
    }
}

#[tokio::test]
async fn nix_port_build_remote_should_run_in_a_spawned_task_over_a_writer_that_is_not_sync() {
    let lab = Lab::new();
    // Nothing is built locally: c's input a is built on the builder too.
    let c = lab.drv("c");
    let (mut child, stdout, stdin, log) = lab.spawn_serve();
    let writer = SendOnlyWriter(Box::pin(stdin));
    let mut client = within(ServeClient::handshake(BufReader::new(stdout), writer))
        .await
        .unwrap();
    let nix = lab.nix.clone();
    let drv = c.clone();
    // tokio::spawn requires the future to be Send.
    let outcome = tokio::spawn(async move {
        let outcome =
            Nix::build_remote(&nix, &mut client, &drv, &BuildSettings::default(), None).await;
        drop(client);
        outcome
    });
    let outcome = within(outcome).await.unwrap().unwrap();
    assert_eq!(outcome.status, RemoteBuildStatus::Built, "{outcome:?}");
    let c_out = outcome.outputs["out"].clone();
    assert_eq!(outcome.copied_back, std::slice::from_ref(&c_out));
    lab.verify("local", &c_out);
    assert!(!lab.valid("local", &lab.output(&lab.drv("a"))));
    assert!(within(child.wait()).await.unwrap().success());
    let log = within(log).await.unwrap();
    assert!(
        log.contains("building-a") && log.contains("building-c"),
        "{log}"
    );
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

/// Builds `b` and `c` (derivation mode) and `d` (closure mode, its intermediate `i` built
/// remotely too) with roots while collections run on LOCAL one after another, then collects
/// once more: every output must be valid and rooted, with its closure. Outputs that were
/// imported but not yet rooted would be taken.
#[tokio::test]
async fn build_remote_should_root_the_outputs_so_no_collection_takes_them() {
    let lab = Lab::new();
    let roots = lab.dir.path().join("roots");
    // The test's inputs (the .drv files and `a`'s output) are kept by roots of their own.
    let drvs: Vec<StorePath> = ["a", "b", "c", "d"].iter().map(|a| lab.drv(a)).collect();
    for drv in &drvs {
        let link = roots.join(format!("drv-{}", drv.name()));
        within(lab.nix.add_root(&link, drv)).await.unwrap();
    }
    let a_out = lab.build_locally(&drvs[0]);
    within(lab.nix.add_root(&roots.join("a"), &a_out))
        .await
        .unwrap();

    let stop = tokio_util::sync::CancellationToken::new();
    let collector = collect_until(lab.nix.clone(), stop.clone());
    let mut remote = lab.serve().await;
    let mut built = Vec::new();
    for drv in &drvs[1..] {
        let root = roots.join(drv.name());
        let outcome = within(build_remote(
            &mut remote.client,
            &lab.nix,
            drv,
            &BuildSettings::default(),
            Some(&root),
        ))
        .await
        .unwrap();
        assert_eq!(outcome.status, RemoteBuildStatus::Built, "{outcome:?}");
        built.push((root, outcome.outputs["out"].clone()));
    }
    stop.cancel();
    let runs = within(collector).await.unwrap();
    assert!(runs >= 1, "no collection ran alongside the builds");
    within(lab.nix.collect_garbage()).await.unwrap();

    for (root, out) in &built {
        assert!(
            lab.valid("local", out),
            "{out} was collected ({runs} collections ran)"
        );
        lab.verify("local", out);
        assert_eq!(std::fs::read_link(root).unwrap(), Path::new(out.as_str()));
        for path in lab.closure("local", out) {
            assert!(lab.valid("local", &self::path(&path)), "{path} of {out}");
        }
    }
    remote.finish().await;
}
