//! The `statuses` loop under the real runtime against the fake forge, with observed state seeded
//! in the database (no Nix): a 10,000-job evaluation in collapsed mode makes at most a handful
//! of status API calls per debounce window while its jobs finish, and ends with statuses equal
//! to the final state.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reconix_fakeforge::{FakeForge, ForgeKind};
use reconix_forge::RetryPolicy;
use reconix_nixcli::FakeNix;
use reconix_reconcilers::forge_clients::ForgeClients;
use reconix_reconcilers::runtime::Controller;
use reconix_reconcilers::statuses::Statuses;
use reconix_reconcilers::{Ctx, LivePorts};
use reconix_spec::{AttrPath, RepoKey, StorePath, System, Timestamp};
use reconix_status::{JobState, NewJob, Status, StatusDb};
use tokio_util::sync::CancellationToken;

const JOBS: usize = 10_000;
const DEBOUNCE: Duration = Duration::from_millis(800);
const SHA: &str = "5a815864dfb9d99b2b0546890c643ff371e2ab55";

fn jobs() -> Vec<NewJob> {
    (0..JOBS)
        .map(|n| NewJob {
            attr: AttrPath::new(format!("packages.x86_64-linux.p{n:05}")).unwrap(),
            name: format!("p{n}"),
            system: Some(System::new("x86_64-linux").unwrap()),
            drv_path: Some(StorePath::new(format!("/nix/store/{n:0>32}-p{n}.drv")).unwrap()),
            outputs: reconix_spec::Outputs::new(),
            deps: Vec::new(),
            required_features: Vec::new(),
            state: JobState::Queued,
            error: None,
            constituents: None,
            meta: reconix_spec::JobMeta::default(),
        })
        .collect()
}

async fn collapsed_evaluation_should_post_few_calls_per_window(kind: ForgeKind) {
    let fake = FakeForge::start(kind).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let git_dir = tmp.path().join("repo.git");
    std::fs::create_dir(&git_dir).unwrap();
    let out = std::process::Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(&git_dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    fake.add_repo("acme/widgets", &git_dir, "main");
    std::fs::write(tmp.path().join("token"), fake.token()).unwrap();
    std::fs::write(tmp.path().join("secret"), "s").unwrap();
    let yaml = format!(
        "state-dir: {dir}/state\nexternal-url: https://ci.example\n\
         forges:\n  hub:\n    kind: {kind}\n    api-url: {api}\n    token-file: {dir}/token\n\
         \x20   webhook-secret-file: {dir}/secret\n    repos:\n      acme/widgets: {{}}\n\
         statuses:\n  debounce: {ms}ms\n  collapse-threshold: 50\n  context-prefix: ci\n",
        dir = tmp.path().display(),
        kind = kind.as_str(),
        api = fake.api_url(),
        ms = DEBOUNCE.as_millis(),
    );
    let spec = Arc::new(reconix_spec::parse(&yaml, Path::new("/t/spec.yaml")).unwrap());
    let (tx, rx) = tokio::sync::watch::channel(spec);
    let status = Status::new(StatusDb::open_memory().unwrap());

    // Observed state: one evaluation of 10,000 queued jobs.
    let key = RepoKey::parse("hub/acme/widgets").unwrap();
    let k = key.clone();
    let (eval, job_ids) = status
        .call(move |db| {
            let repo = db.upsert_repo(&k)?;
            let (id, _) =
                db.insert_evaluation(repo, "refs/heads/main", SHA, "f", Timestamp::now())?;
            db.record_evaluation_result(id, &jobs(), Timestamp::now())?;
            let ids: Vec<_> = db
                .jobs_of_evaluation(id)?
                .into_iter()
                .map(|j| j.id)
                .collect();
            Ok((id, ids))
        })
        .await
        .unwrap();

    let policy = RetryPolicy {
        max_attempts: 2,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
        request_timeout: Duration::from_secs(10),
    };
    let ctx = Arc::new(
        Ctx::new(LivePorts::new(FakeNix::new()), status.clone(), rx.clone())
            .with_forge_clients(ForgeClients::new(Some(policy))),
    );
    let statuses = Controller::new(Arc::new(Statuses::new()), Arc::clone(&ctx), rx);
    let handle = statuses.handle();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(statuses.run(shutdown.clone()));

    // Jobs finish in 40 waves over about 4 debounce windows; every wave wakes the loop.
    let started = Instant::now();
    for wave in job_ids.chunks(JOBS / 40) {
        let wave = wave.to_vec();
        status
            .call(move |db| {
                for (i, id) in wave.iter().enumerate() {
                    let state = if i == 0 {
                        JobState::Failed
                    } else {
                        JobState::Succeeded
                    };
                    db.set_job_state(*id, JobState::Building, None, Timestamp::now())?;
                    db.set_job_state(*id, state, None, Timestamp::now())?;
                }
                Ok(())
            })
            .await
            .unwrap();
        handle.trigger(key.clone());
        tokio::time::sleep(DEBOUNCE / 10).await;
    }
    status
        .call(move |db| db.finish_evaluation_if_done(eval, Timestamp::now()))
        .await
        .unwrap();
    handle.trigger(key.clone());

    // Wait (with a deadline) until the forge shows the final summary.
    let (summary_ok, final_state) = (
        "ci/summary",
        match kind {
            ForgeKind::Gitlab => "failed",
            _ => "failure",
        },
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = if kind == ForgeKind::Github {
            fake.check_runs("acme/widgets")
                .iter()
                .any(|c| c.status == "completed" && c.conclusion.as_deref() == Some("failure"))
        } else {
            fake.statuses("acme/widgets", SHA)
                .iter()
                .any(|s| s.context == summary_ok && s.state == final_state)
        };
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the final summary never arrived: {:?}",
            fake.calls()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    run.await.unwrap();
    drop(tx);

    // Count status API calls (statuses and check runs) per debounce window.
    let calls: Vec<Instant> = fake
        .calls()
        .into_iter()
        .filter(|c| c.path.contains("/statuses/") || c.path.contains("/check-runs"))
        .map(|c| c.time)
        .collect();
    assert!(
        calls.len() >= 3,
        "the summary should have been updated: {} calls",
        calls.len()
    );
    let mut per_window: BTreeMap<u128, usize> = BTreeMap::new();
    for t in &calls {
        let window = t.saturating_duration_since(started).as_millis() / DEBOUNCE.as_millis();
        *per_window.entry(window).or_default() += 1;
    }
    // A sliding check too: no DEBOUNCE-long span holds more than 5 calls.
    for (i, t) in calls.iter().enumerate() {
        let within = calls[i..]
            .iter()
            .take_while(|u| u.saturating_duration_since(*t) < DEBOUNCE)
            .count();
        assert!(
            within <= 5,
            "{within} calls within one debounce window: {per_window:?}"
        );
    }
    // Collapsed: no per-job contexts at all.
    let contexts: Vec<String> = fake
        .status_history("acme/widgets", SHA)
        .into_iter()
        .map(|s| s.context)
        .collect();
    assert!(
        contexts.iter().all(|c| c == "ci/eval" || c == "ci/summary"),
        "per-job statuses were posted: {contexts:?}"
    );
    let eval_status = fake
        .statuses("acme/widgets", SHA)
        .into_iter()
        .find(|s| s.context == "ci/eval")
        .unwrap();
    assert_eq!(eval_status.description.as_deref(), Some("10000 jobs"));
    if kind == ForgeKind::Github {
        let runs = fake.check_runs("acme/widgets");
        assert_eq!(runs.len(), 1, "one rolling check run: {runs:?}");
        let summary = runs[0].output_summary.clone().unwrap_or_default();
        assert!(
            summary.contains("p00000"),
            "the failing attribute is named: {summary}"
        );
        assert!(summary.contains("https://ci.example/jobs/"), "{summary}");
    }
    fake.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_collapsed_evaluation_should_post_at_most_five_calls_per_window() {
    collapsed_evaluation_should_post_few_calls_per_window(ForgeKind::Github).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_collapsed_evaluation_should_post_at_most_five_calls_per_window() {
    collapsed_evaluation_should_post_few_calls_per_window(ForgeKind::Gitlab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_collapsed_evaluation_should_post_at_most_five_calls_per_window() {
    collapsed_evaluation_should_post_few_calls_per_window(ForgeKind::Gitea).await;
}
