//! Closure sizes of succeeded builds are measured in batches: builds queued together cost one
//! `nix path-info` query, and each gets the size of its own closure.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::collections::BTreeMap;

use reconix_nixcli::{Call, FakeNix, PathSize};
use reconix_reconcilers::closures::ClosureQueue;
use reconix_reconcilers::runtime::Tasks;
use reconix_spec::{AttrPath, JobMeta, Outputs, RepoKey, StorePath, System, Timestamp};
use reconix_status::{BuildState, BuiltOutputs, JobState, Metrics, NewJob, Status, StatusDb};

mod common;
use common::path;

/// A database where the builds of `job0.drv … job{n-1}.drv` succeeded, each with one output.
fn built(n: u32) -> (Status, Vec<StorePath>) {
    let mut db = StatusDb::open_memory().unwrap();
    let repo = db
        .upsert_repo(&RepoKey::parse("here/demo").unwrap())
        .unwrap();
    let t = Timestamp(1);
    let (eval, _) = db
        .insert_evaluation(repo, "refs/heads/main", &"a".repeat(40), "git+file:///x", t)
        .unwrap();
    let drvs: Vec<StorePath> = (0..n).map(|i| path(i, &format!("job{i}.drv"))).collect();
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| NewJob {
            attr: AttrPath::new(format!("packages.x86_64-linux.job{i}")).unwrap(),
            name: format!("job{i}"),
            system: Some(System::new("x86_64-linux").unwrap()),
            drv_path: Some(drvs[i as usize].clone()),
            outputs: Outputs::from([("out".to_owned(), path(100 + i, &format!("job{i}")))]),
            deps: Vec::new(),
            required_features: Vec::new(),
            state: JobState::Queued,
            error: None,
            meta: JobMeta::default(),
            constituents: None,
        })
        .collect();
    db.record_evaluation_result(eval, &jobs, t).unwrap();
    for drv in &drvs {
        db.upsert_build(drv, None, BuildState::Running, t).unwrap();
        db.finish_built(drv, Some(0), &BuiltOutputs::default(), t)
            .unwrap();
    }
    (Status::new(db), drvs)
}

/// Waits until every one of `drvs` has a closure size; returns them by derivation name.
async fn sizes(status: &Status, drvs: &[StorePath]) -> BTreeMap<String, u64> {
    let drvs = drvs.to_vec();
    common::until(status, "every closure measured", move |db| {
        let mut sizes = BTreeMap::new();
        for drv in &drvs {
            match db.build_by_drv(drv)?.and_then(|b| b.closure_size_bytes) {
                Some(bytes) => sizes.insert(drv.name().to_owned(), bytes),
                None => return Ok(None),
            };
        }
        Ok(Some(sizes))
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn builds_queued_together_should_be_measured_with_one_query() {
    let (status, drvs) = built(3);
    let nix = FakeNix::new();
    let shared = path(200, "glibc");
    nix.set_path_size(
        shared.clone(),
        PathSize {
            nar_size: 7,
            references: vec![shared.clone()],
        },
    );
    for i in 0..3 {
        nix.set_path_size(
            path(100 + i, &format!("job{i}")),
            PathSize {
                nar_size: 100 * u64::from(i + 1),
                references: vec![shared.clone()],
            },
        );
    }
    let (queue, metrics, tasks) = (ClosureQueue::default(), Metrics::new(), Tasks::new());
    // On this one thread the measuring task starts only once the test awaits: all three are
    // queued by then, as builds succeeding while a measurement runs would be.
    for drv in &drvs {
        queue.measure(drv.clone(), &nix, &status, &metrics, &tasks);
    }
    let measured = sizes(&status, &drvs).await;
    assert_eq!(
        measured,
        BTreeMap::from([
            ("job0.drv".to_owned(), 107),
            ("job1.drv".to_owned(), 207),
            ("job2.drv".to_owned(), 307),
        ])
    );
    let queries: Vec<Vec<StorePath>> = nix
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Closure(paths) => Some(paths),
            _ => None,
        })
        .collect();
    assert_eq!(
        queries,
        [vec![
            path(100, "job0"),
            path(101, "job1"),
            path(102, "job2")
        ]],
        "one query for the three builds"
    );
    // The task ended with the queue: a later build starts a new one.
    tasks.tracker().close();
    tokio::time::timeout(std::time::Duration::from_secs(10), tasks.tracker().wait())
        .await
        .expect("the measuring task ends once the queue is empty");
}

#[tokio::test(flavor = "current_thread")]
async fn a_build_whose_outputs_are_gone_should_not_stop_the_others_being_measured() {
    let (status, drvs) = built(2);
    let nix = FakeNix::new();
    // Only job1's output is in the store: the batch's query fails, then each is measured alone.
    nix.set_path_size(
        path(101, "job1"),
        PathSize {
            nar_size: 5,
            references: Vec::new(),
        },
    );
    let (queue, metrics, tasks) = (ClosureQueue::default(), Metrics::new(), Tasks::new());
    for drv in &drvs {
        queue.measure(drv.clone(), &nix, &status, &metrics, &tasks);
    }
    assert_eq!(
        sizes(&status, &drvs[1..]).await,
        BTreeMap::from([("job1.drv".to_owned(), 5)])
    );
    tasks.tracker().close();
    tokio::time::timeout(std::time::Duration::from_secs(10), tasks.tracker().wait())
        .await
        .unwrap();
    let job0 = status
        .call({
            let d = drvs[0].clone();
            move |db| db.build_by_drv(&d)
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job0.closure_size_bytes, None);
}
