//! The daemon against a fake GitHub, GitLab and Gitea: hooks reconciled, deliveries evaluated and
//! built, statuses posted in each forge's vocabulary, duplicates coalesced, lost deliveries
//! caught by resync, the PR trust gate, cancel-on-push, 401 pause and resume, and hook drift.
//!
//! One scenario per forge kind, each against its own fake forge and daemon, with real Nix.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use reconix_e2e::{DEADLINE, DaemonConfig, GitRepo, TestDaemon, run, salt};
use reconix_fakeforge::{FakeForge, FakePermission, FakePr, FakeStatus, ForgeKind, PrAction};
use serde_json::Value;

const REPO: &str = "acme/widgets";
const P: &str = "packages.x86_64-linux.";

/// A flake with a job that builds, one that fails, and one that takes `slow_secs`.
fn flake(salt: &str, variant: &str, slow_secs: u32) -> String {
    r#"{
  outputs = { self }:
    let
      mk = name: script: derivation {
        inherit name;
        system = "x86_64-linux";
        salt = "@SALT@-@V@";
        builder = "/bin/sh";
        args = [ "-c" script ];
      };
    in {
      packages.x86_64-linux = {
        ok = mk "ok" "echo built > $out";
        broken = mk "broken" "echo this build fails >&2; exit 1";
        slow = mk "slow" "sleep @SLOW@; echo slow > $out";
      };
    };
}
"#
    .replace("@SALT@", salt)
    .replace("@V@", variant)
    .replace("@SLOW@", &slow_secs.to_string())
}

/// The forge's raw words for reconix's success, failure and cancelled states.
fn vocabulary(kind: ForgeKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        ForgeKind::Github => ("success", "failure", "error"),
        ForgeKind::Gitlab => ("success", "failed", "canceled"),
        _ => ("success", "failure", "warning"),
    }
}

struct Scenario {
    kind: ForgeKind,
    rt: tokio::runtime::Runtime,
    fake: FakeForge,
    work: GitRepo,
    _bare_dir: tempfile::TempDir,
    bare: PathBuf,
    secrets: tempfile::TempDir,
    salt: String,
    daemon: TestDaemon,
}

impl Scenario {
    fn start(kind: ForgeKind) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let fake = rt.block_on(FakeForge::start(kind))?;
        let salt = salt();
        let work = GitRepo::new()?;
        work.commit_flake(&flake(&salt, "main-1", 1), "one")?;
        let bare_dir = tempfile::Builder::new()
            .prefix("reconix-e2e-bare")
            .tempdir()?;
        let bare = bare_dir.path().join("widgets.git");
        run(std::process::Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(work.path())
            .arg(&bare))?;
        fake.add_repo(REPO, &bare, "main");
        fake.set_permission(REPO, "alice", FakePermission::Write);
        fake.set_permission(REPO, "mallory", FakePermission::Read);
        let secrets = tempfile::tempdir()?;
        std::fs::write(secrets.path().join("token"), fake.token())?;
        std::fs::write(secrets.path().join("secret"), format!("hook-secret-{salt}"))?;
        let spec = format!(
            "state-dir: {{state_dir}}\n\
             external-url: http://127.0.0.1:{{port}}\n\
             forges:\n  hub:\n    kind: {kind}\n    api-url: {api}\n    web-url: {web}\n\
             \x20   token-file: {dir}/token\n    webhook-secret-file: {dir}/secret\n\
             \x20   poll-interval: 3s\n    repos:\n      {REPO}:\n        branches: [main]\n\
             \x20       allowlist: [bot]\n\
             builders:\n  local:\n    max-jobs: 3\n\
             statuses:\n  debounce: 1s\n  context-prefix: reconix\n",
            kind = kind.as_str(),
            api = fake.api_url(),
            web = fake.web_url(),
            dir = secrets.path().display(),
        );
        let daemon = TestDaemon::start(&DaemonConfig { spec })?;
        Ok(Self {
            kind,
            rt,
            fake,
            work,
            _bare_dir: bare_dir,
            bare,
            secrets,
            salt,
            daemon,
        })
    }

    fn hook_url(&self) -> String {
        format!("{}/webhooks/hub", self.daemon.url())
    }

    fn secret(&self) -> String {
        format!("hook-secret-{}", self.salt)
    }

    /// Commits a new flake on `branch` of the working repo and pushes it to the fake's repo.
    fn push(&self, branch: &str, variant: &str, slow_secs: u32) -> Result<(String, String)> {
        let before = self
            .git_bare(&["rev-parse", &format!("refs/heads/{branch}")])
            .unwrap_or_else(|_| "0".repeat(40));
        self.work.git(&["checkout", "-q", "-B", branch])?;
        let rev = self
            .work
            .commit_flake(&flake(&self.salt, variant, slow_secs), variant)?;
        self.work.git(&[
            "push",
            "-q",
            "-f",
            &self.bare.display().to_string(),
            &format!("{branch}:refs/heads/{branch}"),
        ])?;
        Ok((before.trim().to_owned(), rev))
    }

    fn git_bare(&self, args: &[&str]) -> Result<String> {
        run(std::process::Command::new("git")
            .arg("-C")
            .arg(&self.bare)
            .args(args))
    }

    fn statuses(&self, sha: &str) -> Vec<FakeStatus> {
        self.fake.statuses(REPO, sha)
    }

    fn status_of(&self, sha: &str, context: &str) -> Option<FakeStatus> {
        self.statuses(sha)
            .into_iter()
            .find(|s| s.context == context)
    }

    /// Waits until `context` on `sha` is in the forge's raw `state`.
    fn wait_status(&self, sha: &str, context: &str, state: &str) -> Result<FakeStatus> {
        self.daemon.wait_for(
            &format!("status {context} on {sha} to be {state}"),
            DEADLINE,
            |_| Ok(self.status_of(sha, context).filter(|s| s.state == state)),
        )
    }

    fn evaluations_of(&self, rev: &str) -> Result<Vec<Value>> {
        Ok(self
            .daemon
            .evaluations()?
            .into_iter()
            .filter(|e| e["rev"] == rev)
            .collect())
    }

    fn forge_health(&self) -> Result<Value> {
        let forges = self.daemon.get_json("/api/v1/forges")?;
        forges
            .as_array()
            .and_then(|a| a.iter().find(|f| f["forge"] == "hub"))
            .cloned()
            .context("forge hub missing from /api/v1/forges")
    }
}

fn scenario(kind: ForgeKind) -> Result<()> {
    let s = Scenario::start(kind)?;
    let (ok, failed, cancelled) = vocabulary(kind);
    let ctx = |attr: &str| format!("reconix/{P}{attr}");

    // On start the hook is created, pointing at us, with our secret and the needed events.
    let hook = s
        .daemon
        .wait_for("the hook to be created", DEADLINE, |_| {
            Ok(s.fake
                .hooks(REPO)
                .into_iter()
                .find(|h| h.url == s.hook_url()))
        })
        .with_context(|| s.daemon.log())?;
    ensure!(hook.active, "hook is inactive: {hook:?}");
    ensure!(
        hook.secret.as_deref() == Some(s.secret().as_str()),
        "hook secret not set"
    );
    ensure!(
        hook.events.contains(&"push".to_owned())
            && hook.events.contains(&"pull_request".to_owned()),
        "hook events: {:?}",
        hook.events
    );

    // A push delivery → evaluation → builds → statuses equal to the job states.
    let (before, rev) = s.push("main", "main-2", 1)?;
    let deliveries =
        s.rt.block_on(s.fake.deliver_push(REPO, "refs/heads/main", &before, &rev));
    ensure!(
        deliveries.len() == 1 && deliveries[0].status == 202,
        "push delivery: {:?}",
        deliveries.iter().map(|d| d.status).collect::<Vec<_>>()
    );
    s.daemon.wait_evaluation(&rev, "finished")?;
    s.wait_status(&rev, &ctx("ok"), ok)?;
    s.wait_status(&rev, &ctx("slow"), ok)?;
    let broken = s.wait_status(&rev, &ctx("broken"), failed)?;
    ensure!(
        broken
            .target_url
            .as_deref()
            .is_some_and(|u| u.starts_with(&format!("{}/jobs/", s.daemon.url()))),
        "target_url: {broken:?}"
    );
    s.wait_status(&rev, "reconix/eval", ok)?;

    // The same delivery twice → one evaluation.
    let again = s.rt.block_on(s.fake.redeliver(&deliveries[0]));
    ensure!(again == 200, "redelivery answered {again}");
    ensure!(s.evaluations_of(&rev)?.len() == 1, "duplicate evaluation");

    // A dropped delivery → caught by the periodic resync.
    let (_, dropped) = s.push("main", "main-3", 1)?;
    s.daemon.wait_evaluation(&dropped, "finished")?;

    // An untrusted PR → not evaluated; its status explains.
    let (_, evil) = s.push("evil", "evil", 1)?;
    s.fake.open_pull_request(
        REPO,
        FakePr {
            number: 1,
            author: "mallory".to_owned(),
            head_ref: "evil".to_owned(),
            head_sha: evil.clone(),
            base_ref: "main".to_owned(),
            from_fork: true,
        },
    );
    s.rt.block_on(s.fake.deliver_pull_request(REPO, 1, PrAction::Opened));
    let waiting = s.wait_status(&evil, "reconix/eval", "pending")?;
    ensure!(
        waiting
            .description
            .as_deref()
            .is_some_and(|d| d.contains("waiting for a trusted push") && d.contains("mallory")),
        "untrusted status: {waiting:?}"
    );
    ensure!(
        s.evaluations_of(&evil)?.is_empty(),
        "untrusted PR was evaluated"
    );

    // An allowlisted PR → built, fetched through the forge's PR ref.
    let (_, botrev) = s.push("bot-update", "bot", 1)?;
    s.fake.open_pull_request(
        REPO,
        FakePr {
            number: 2,
            author: "bot".to_owned(),
            head_ref: "bot-update".to_owned(),
            head_sha: botrev.clone(),
            base_ref: "main".to_owned(),
            from_fork: false,
        },
    );
    s.rt.block_on(s.fake.deliver_pull_request(REPO, 2, PrAction::Opened));
    let detail = s.daemon.wait_evaluation(&botrev, "finished")?;
    let pr_ref = reconix_forge::pull_request_ref(kind, 2);
    ensure!(
        detail["ref"] == pr_ref.as_str(),
        "PR evaluated on {}",
        detail["ref"]
    );
    s.wait_status(&botrev, &ctx("ok"), ok)?;

    // A new push to a PR → the old evaluation is cancelled and its statuses say superseded.
    let (_, first) = s.push("feature", "feature-1", 600)?;
    s.fake.open_pull_request(
        REPO,
        FakePr {
            number: 3,
            author: "alice".to_owned(),
            head_ref: "feature".to_owned(),
            head_sha: first.clone(),
            base_ref: "main".to_owned(),
            from_fork: false,
        },
    );
    s.rt.block_on(s.fake.deliver_pull_request(REPO, 3, PrAction::Opened));
    s.wait_status(
        &first,
        &ctx("slow"),
        if kind == ForgeKind::Gitlab {
            "running"
        } else {
            "pending"
        },
    )?;
    let (_, second) = s.push("feature", "feature-2", 1)?;
    s.fake.update_pull_request(REPO, 3, &second);
    s.rt.block_on(s.fake.deliver_pull_request(REPO, 3, PrAction::Synchronize));
    s.daemon.wait_evaluation(&second, "finished")?;
    let superseded = s.wait_status(&first, &ctx("slow"), cancelled)?;
    ensure!(
        superseded
            .description
            .as_deref()
            .is_some_and(|d| d.contains("superseded")),
        "superseded status: {superseded:?}"
    );
    let old = s.evaluations_of(&first)?;
    ensure!(
        old.iter().all(|e| e["state"] == "superseded"),
        "old evaluation: {old:?}"
    );

    // 401 → the forge is paused (loudly), then resumed once the token works again.
    s.fake.set_token("rotated-token");
    s.daemon.wait_for("the forge to be paused", DEADLINE, |_| {
        let h = s.forge_health()?;
        Ok((h["state"] == "paused").then_some(()))
    })?;
    ensure!(
        s.daemon.get_text("/")?.to_lowercase().contains("paused"),
        "the status page does not show the pause"
    );
    std::fs::write(s.secrets.path().join("token"), "rotated-token")?;
    s.daemon.wait_for("the forge to resume", DEADLINE, |_| {
        let h = s.forge_health()?;
        Ok((h["state"] == "ok").then_some(()))
    })?;

    // A drifted hook (URL changed on the forge) → patched, and the drift recorded.
    s.fake.tamper_hook(REPO, hook.id, |h| {
        h.url = "https://elsewhere.example/hook".to_owned()
    });
    s.daemon
        .wait_for("the hook URL to be repaired", DEADLINE, |_| {
            Ok(s.fake
                .hooks(REPO)
                .into_iter()
                .find(|h| h.id == hook.id && h.url == s.hook_url()))
        })?;
    // A changed secret shows up as deliveries failing verification → set again.
    s.fake.tamper_hook(REPO, hook.id, |h| {
        h.secret = Some("changed-on-the-forge".to_owned())
    });
    let (before, rev) = s.push("main", "main-4", 1)?;
    let rejected =
        s.rt.block_on(s.fake.deliver_push(REPO, "refs/heads/main", &before, &rev));
    ensure!(
        rejected.iter().all(|d| d.status == 401),
        "a delivery signed with another secret was accepted"
    );
    s.daemon
        .wait_for("the hook secret to be repaired", DEADLINE, |_| {
            Ok(s.fake
                .hooks(REPO)
                .into_iter()
                .find(|h| h.id == hook.id && h.secret.as_deref() == Some(s.secret().as_str())))
        })?;
    let drift = s.daemon.get_json("/api/v1/drift")?;
    for field in ["url", "secret"] {
        let found = drift.as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["field"] == field && r["loop"] == "webhooks" && !r["repaired_at"].is_null()
            })
        });
        ensure!(found, "no repaired {field} drift in {drift}");
    }
    // Only one hook of ours, ever.
    let ours = s
        .fake
        .hooks(REPO)
        .into_iter()
        .filter(|h| h.url == s.hook_url())
        .count();
    ensure!(ours == 1, "{ours} hooks point at the daemon");

    s.fake.assert_no_violations();
    if s.kind != kind {
        bail!("unreachable");
    }
    Ok(())
}

fn with_log(kind: ForgeKind) -> Result<()> {
    scenario(kind).with_context(|| format!("{kind} scenario"))
}

#[test]
fn github_end_to_end() -> Result<()> {
    with_log(ForgeKind::Github)
}

#[test]
fn gitlab_end_to_end() -> Result<()> {
    with_log(ForgeKind::Gitlab)
}

#[test]
fn gitea_end_to_end() -> Result<()> {
    with_log(ForgeKind::Gitea)
}
