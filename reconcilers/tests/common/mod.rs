//! Helpers shared by the loop tests: fake store paths, scripted jobs and git.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "test helpers; not every test file uses each"
)]

use std::path::Path;
use std::process::Command;

use std::time::Duration;

use reconix_nixcli::{EvalJob, JobDrv};
use reconix_spec::{AttrPath, StorePath, System};
use reconix_status::{Status, StatusDb};

/// A store path `/nix/store/<n, 32 digits>-<name>`.
pub fn path(n: u32, name: &str) -> StorePath {
    StorePath::new(format!("/nix/store/{n:0>32}-{name}")).unwrap()
}

/// A job `packages.x86_64-linux.<attr>` of drv `n` (output `n + 100`) depending on `deps`.
pub fn job(attr: &str, n: u32, deps: &[&str]) -> EvalJob {
    EvalJob {
        attr: AttrPath::new(format!("packages.x86_64-linux.{attr}")).unwrap(),
        name: attr.to_owned(),
        system: Some(System::new("x86_64-linux").unwrap()),
        result: Ok(JobDrv {
            drv_path: path(n, &format!("{attr}.drv")),
            outputs: reconix_spec::Outputs::from([("out".to_owned(), path(n + 100, attr))]),
            deps: deps
                .iter()
                .map(|d| AttrPath::new(format!("packages.x86_64-linux.{d}")).unwrap())
                .collect(),
            required_features: Vec::new(),
            constituents: None,
            meta: reconix_spec::JobMeta::default(),
            skipped: None,
        }),
    }
}

/// Runs git in `dir` (as user `t`); returns its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Polls `f` against the database every 10 ms for up to 10 s; fails naming `what`.
pub async fn until<T: Send + 'static>(
    status: &Status,
    what: &str,
    f: impl Fn(&mut StatusDb) -> reconix_status::Result<Option<T>> + Send + Sync + Clone + 'static,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        if let Some(v) = status.call(f.clone()).await.unwrap() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
    }
}
