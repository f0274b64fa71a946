//! Router tests of the pages and the live log stream: `router(state).oneshot(..)`, no server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures_util::StreamExt;
use reconix_spec::{AttrPath, ForgeName, RepoKey, StorePath, System, Timestamp};
use reconix_status::{
    BuildState, EvaluationId, ForgeHealthState, JobId, JobState, NewConstituent, NewDrift, NewJob,
    PullRequestUpdate, RepoId, Status, StatusDb,
};
use tower::ServiceExt;

use crate::{AppState, router};

const T: Timestamp = Timestamp(1_700_000_000_000);
const HOSTILE: &str = "packages.x86_64-linux.\"<img src=x onerror=alert(1)>\"";

fn drv(n: u32, name: &str) -> StorePath {
    StorePath::new(format!("/nix/store/{n:0>32}-{name}.drv")).unwrap()
}

fn job(n: u32, attr: &str, deps: &[&str]) -> NewJob {
    NewJob {
        attr: AttrPath::new(attr).unwrap(),
        name: format!("job{n}"),
        system: Some(System::new("x86_64-linux").unwrap()),
        drv_path: Some(drv(n, &format!("job{n}"))),
        outputs: reconix_spec::Outputs::new(),
        deps: deps.iter().map(|d| AttrPath::new(*d).unwrap()).collect(),
        required_features: Vec::new(),
        state: JobState::Queued,
        error: None,
        constituents: None,
        meta: reconix_spec::JobMeta::default(),
    }
}

fn pkg(name: &str) -> String {
    format!("packages.x86_64-linux.{name}")
}

/// Moves job `attr` of `eval` to `state`, with a finished build of `build` state when given.
fn finish(
    db: &mut StatusDb,
    eval: EvaluationId,
    attr: &str,
    state: JobState,
    build: Option<BuildState>,
    error: Option<&str>,
) -> JobId {
    let job = db
        .jobs_of_evaluation(eval)
        .unwrap()
        .into_iter()
        .find(|j| j.attr.as_str() == attr)
        .unwrap();
    if let (Some(b), Some(drv)) = (build, &job.drv_path) {
        db.upsert_build(drv, None, BuildState::Running, T).unwrap();
        db.finish_build(drv, b, Some(1), error, None, T).unwrap();
        if b == BuildState::Succeeded {
            db.record_closure_size(drv, 3 << 20).unwrap();
        }
    }
    db.set_job_state(job.id, state, error, T).unwrap();
    job.id
}

struct Fixture {
    st: AppState,
    base: EvaluationId,
    pr: EvaluationId,
    /// Failed in the pull request (succeeded on main).
    a: JobId,
    /// Dependency-failed because of `a`.
    e: JobId,
    /// Still building, with a log.
    f: JobId,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Repo `gh/o/r` with a finished evaluation of main and an evaluation of pull request #4
/// (a newly failing, b fixed, c unchanged, a hostile new attr that failed to evaluate, e
/// dependency-failed on a, f building with a log); forge `gh` paused; one drift row.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("f.log");
    std::fs::write(&log, "line one\n").unwrap();
    let mut db = StatusDb::open_memory().unwrap();
    let repo: RepoId = db.upsert_repo(&RepoKey::parse("gh/o/r").unwrap()).unwrap();
    let main_rev = "b".repeat(40);
    db.record_ref(repo, "refs/heads/main", &main_rev, T)
        .unwrap();
    let (base, _) = db
        .insert_evaluation(
            repo,
            "refs/heads/main",
            &main_rev,
            "git+https://x/o/r?rev=b",
            T,
        )
        .unwrap();
    db.record_evaluation_result(
        base,
        &[
            job(1, &pkg("a"), &[]),
            job(2, &pkg("b"), &[]),
            job(3, &pkg("c"), &[]),
        ],
        T,
    )
    .unwrap();
    finish(
        &mut db,
        base,
        &pkg("a"),
        JobState::Succeeded,
        Some(BuildState::Succeeded),
        None,
    );
    finish(
        &mut db,
        base,
        &pkg("b"),
        JobState::Failed,
        Some(BuildState::Failed),
        Some("b broke"),
    );
    finish(
        &mut db,
        base,
        &pkg("c"),
        JobState::Succeeded,
        Some(BuildState::Succeeded),
        None,
    );
    assert!(db.finish_evaluation_if_done(base, T).unwrap());

    let head = "c".repeat(40);
    let pr = PullRequestUpdate {
        number: 4,
        head_sha: head.clone(),
        head_ref: "feature".to_owned(),
        base_ref: "main".to_owned(),
        author: Some("mallory<script>".to_owned()),
        from_fork: true,
        open: true,
    };
    db.upsert_pull_request(repo, &pr, T).unwrap();
    let (pr_eval, _) = db
        .insert_evaluation(
            repo,
            "refs/pull/4/head",
            &head,
            "git+https://x/o/r?rev=c",
            T,
        )
        .unwrap();
    let mut hostile = job(14, HOSTILE, &[]);
    hostile.state = JobState::EvalFailed;
    hostile.drv_path = None;
    hostile.error = Some("<b>boom</b>".to_owned());
    db.record_evaluation_result(
        pr_eval,
        &[
            job(11, &pkg("a"), &[]),
            job(12, &pkg("b"), &[]),
            job(13, &pkg("c"), &[]),
            hostile,
            job(15, &pkg("e"), &[&pkg("a")]),
            job(16, &pkg("f"), &[]),
        ],
        T,
    )
    .unwrap();
    let a = finish(
        &mut db,
        pr_eval,
        &pkg("a"),
        JobState::Failed,
        Some(BuildState::Failed),
        Some("<script>alert(1)</script>"),
    );
    finish(
        &mut db,
        pr_eval,
        &pkg("b"),
        JobState::Succeeded,
        Some(BuildState::Succeeded),
        None,
    );
    finish(
        &mut db,
        pr_eval,
        &pkg("c"),
        JobState::Succeeded,
        Some(BuildState::Succeeded),
        None,
    );
    let e = finish(
        &mut db,
        pr_eval,
        &pkg("e"),
        JobState::DependencyFailed,
        None,
        None,
    );
    let f = finish(&mut db, pr_eval, &pkg("f"), JobState::Building, None, None);
    db.upsert_build(&drv(16, "job16"), None, BuildState::Running, T)
        .unwrap();
    db.record_build_log(&drv(16, "job16"), &log, 9, T).unwrap();

    db.set_forge_health(
        &ForgeName::new("gh").unwrap(),
        ForgeHealthState::Paused,
        Some("token <rejected>"),
        None,
        T,
    )
    .unwrap();
    db.record_drift(
        &NewDrift {
            loop_name: "webhooks",
            subject: "gh/o/r hook 7",
            field: "url",
            desired: Some("https://ci/<hooks>"),
            observed: None,
        },
        T,
    )
    .unwrap();
    db.record_loop_run("builds", Err("nix <exploded>"), None, T)
        .unwrap();
    Fixture {
        st: AppState::new(Status::new(db)),
        base,
        pr: pr_eval,
        a,
        e,
        f,
        log,
        _dir: dir,
    }
}

async fn get(st: &AppState, uri: &str) -> (StatusCode, String) {
    let resp = router(st.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Asserts that `body` shows the hostile attribute only escaped.
fn assert_escaped(body: &str) {
    assert!(
        body.contains("&#60;img src=x onerror=alert(1)&#62;"),
        "hostile attr not shown escaped: {body}"
    );
    assert!(!body.contains("<img"), "unescaped markup: {body}");
    assert!(!body.contains("<script>"), "unescaped markup: {body}");
}

#[tokio::test]
async fn overview_should_announce_the_paused_forge_and_link_evaluations() {
    let fx = fixture();
    let (code, body) = get(&fx.st, "/").await;
    assert_eq!(code, StatusCode::OK);
    // e2e/tests/forges.rs looks for "paused" on `/`.
    assert!(
        body.contains("forge gh is PAUSED: token &#60;rejected&#62;"),
        "{body}"
    );
    assert!(
        body.contains(&format!("href=\"/evaluations/{}\"", fx.pr)),
        "{body}"
    );
    assert!(body.contains(&format!("href=\"/evaluations/{}\"", fx.base)));
    assert!(body.contains("href=\"/repos/gh/o/r\""));
    assert!(
        body.contains("nix &#60;exploded&#62;"),
        "loop error: {body}"
    );
    assert!(body.contains(">local<"), "builders: {body}");
    // The newest evaluation's failures come first, linked.
    assert!(body.contains(&format!("href=\"/jobs/{}\"", fx.a)));
    assert_escaped(&body);
}

#[tokio::test]
async fn repo_page_should_list_heads_pull_requests_and_evaluations() {
    let fx = fixture();
    let (code, body) = get(&fx.st, "/repos/gh/o/r").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("refs/heads/main"));
    assert!(body.contains(&format!("href=\"/evaluations/{}\"", fx.base)));
    assert!(body.contains("href=\"/repos/gh/o/r/pulls/4\""));
    assert!(body.contains("mallory&#60;script&#62;"), "{body}");
    assert!(body.contains("(fork)"));
    assert!(!body.contains("<script>"));
    for missing in ["/repos/gh/o/nope", "/repos/gh/..", "/repos/gh/o/r/pulls/99"] {
        let (code, body) = get(&fx.st, missing).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{missing}");
        assert!(body.contains("<h1>Not found</h1>"), "{body}");
    }
}

#[tokio::test]
async fn pull_request_page_should_compare_with_the_base_branch() {
    let fx = fixture();
    let (code, body) = get(&fx.st, "/repos/gh/o/r/pulls/4").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let section = |title: &str| {
        let start = body
            .find(&format!(">{title} ("))
            .unwrap_or_else(|| panic!("{title}: {body}"));
        let rest = &body[start..];
        let end = rest[1..].find("<h2").map_or(rest.len(), |i| i + 1);
        rest[..end].to_owned()
    };
    assert!(section("Newly failing").contains(&pkg("a")));
    assert!(section("Newly failing").contains(&format!("href=\"/jobs/{}\"", fx.a)));
    assert!(section("Still failing").contains("(0)"));
    assert!(section("Fixed").contains(&pkg("b")));
    assert!(!section("Fixed").contains(&pkg("c")));
    let new = section("New jobs");
    assert!(
        new.contains("&#60;img src=x onerror=alert(1)&#62;"),
        "{new}"
    );
    assert!(new.contains(&pkg("e")) && new.contains(&pkg("f")));
    assert!(
        body.contains("1 jobs of the pull request are not finished"),
        "{body}"
    );
    assert!(body.contains(&format!("href=\"/evaluations/{}\"", fx.base)));
    assert_escaped(&body);
}

#[tokio::test]
async fn evaluation_page_should_group_failures_first_with_reproduce_commands() {
    let fx = fixture();
    let (code, body) = get(&fx.st, &format!("/evaluations/{}", fx.pr)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let pos = |needle: &str| {
        body.find(needle)
            .unwrap_or_else(|| panic!("{needle}: {body}"))
    };
    let order = [
        "id=\"failed\"",
        "id=\"dependency-failed\"",
        "id=\"eval-failed\"",
        "id=\"building\"",
        "id=\"succeeded\"",
    ]
    .map(pos);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    // The dependency-failed job names and links the dependency that failed.
    let e_row = &body[pos(&format!("href=\"/jobs/{}\"", fx.e))..];
    assert!(
        e_row.contains(&format!(
            "because</span> <a class=\"failed\" href=\"/jobs/{}\">",
            fx.a
        )),
        "{e_row}"
    );
    assert!(
        body.contains(&format!(
            "value=\"nix build &#39;git+https://x/o/r?rev=c#{}&#39;\"",
            pkg("a")
        )),
        "{body}"
    );
    assert!(body.contains("&#60;b&#62;boom&#60;/b&#62;"));
    // Succeeded builds show the size of their outputs' closure.
    assert!(body.contains("<th>closure</th>"), "{body}");
    assert!(body.contains("<td>3.0 MiB</td>"), "{body}");
    assert!(body.contains("page 1 of 1"));
    assert!(!body.contains("rel=\"next\""));
    assert_escaped(&body);
    assert_eq!(
        get(&fx.st, "/evaluations/999").await.0,
        StatusCode::NOT_FOUND
    );
    let page2 = format!("/evaluations/{}?page=2", fx.pr);
    assert_eq!(get(&fx.st, &page2).await.0, StatusCode::NOT_FOUND);
    let page0 = format!("/evaluations/{}?page=0", fx.pr);
    assert_eq!(get(&fx.st, &page0).await.0, StatusCode::NOT_FOUND);
}

/// A database with one evaluation of `n` jobs: every 10th failed, the rest succeeded.
fn big_evaluation(n: u32) -> (AppState, EvaluationId) {
    let mut db = StatusDb::open_memory().unwrap();
    let repo = db
        .upsert_repo(&RepoKey::parse("gh/o/big").unwrap())
        .unwrap();
    let (id, _) = db
        .insert_evaluation(
            repo,
            "refs/heads/main",
            &"d".repeat(40),
            "git+https://x/big",
            T,
        )
        .unwrap();
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| job(i, &pkg(&format!("p{i:05}")), &[]))
        .collect();
    db.record_evaluation_result(id, &jobs, T).unwrap();
    for (i, j) in db.jobs_of_evaluation(id).unwrap().into_iter().enumerate() {
        let (job_state, build_state) = if i % 10 == 0 {
            (JobState::Failed, BuildState::Failed)
        } else {
            (JobState::Succeeded, BuildState::Succeeded)
        };
        let drv = j.drv_path.unwrap();
        db.upsert_build(&drv, None, BuildState::Running, T).unwrap();
        db.finish_build(&drv, build_state, Some(0), None, Some(Path::new("/l")), T)
            .unwrap();
        db.set_job_state(j.id, job_state, None, T).unwrap();
    }
    (AppState::new(Status::new(db)), id)
}

#[tokio::test]
async fn evaluation_pages_should_link_to_each_other_and_hold_200_jobs() {
    let (st, id) = big_evaluation(450);
    let rows = |body: &str| body.matches("<input class=\"copy\"").count();
    let (code, first) = get(&st, &format!("/evaluations/{id}")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(rows(&first), 200);
    assert!(first.contains("page 1 of 3"));
    assert!(first.contains(&format!("rel=\"next\" href=\"/evaluations/{id}?page=2\"")));
    assert!(!first.contains("rel=\"prev\""));
    // Failures first: the 45 failed jobs open page 1.
    assert!(first.contains("failed (45)"), "{first}");
    assert!(first.find(&pkg("p00000")) < first.find(&pkg("p00001")));
    assert!(first.contains(&format!("href=\"/evaluations/{id}?page=1#succeeded\"")));

    let (code, last) = get(&st, &format!("/evaluations/{id}?page=3")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(rows(&last), 50);
    assert!(last.contains("jobs 401–450 of 450"));
    assert!(last.contains(&format!("rel=\"prev\" href=\"/evaluations/{id}?page=2\"")));
    assert!(!last.contains("rel=\"next\""));
    assert_eq!(
        get(&st, &format!("/evaluations/{id}?page=4")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn job_page_should_render_the_log_with_colours_escaped() {
    let fx = fixture();
    std::fs::write(&fx.log, "line one\n\x1b[31mred <b>\x1b[0m\x1b[2K\npartial").unwrap();
    let (code, body) = get(&fx.st, &format!("/jobs/{}", fx.f)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(
        body.contains("<pre class=\"log\" id=\"log\" data-stream=\"/jobs/"),
        "{body}"
    );
    assert!(
        body.contains("line one\n<span class=\"ansi-fg1\">red &lt;b&gt;</span>\n</pre>"),
        "{body}"
    );
    // A building job's page shows complete lines; the stream continues after them.
    assert!(!body.contains("partial"));
    let offset = "line one\n\x1b[31mred <b>\x1b[0m\x1b[2K\n".len();
    assert!(
        body.contains(&format!("log/stream?offset={offset}\"")),
        "{body}"
    );
    assert!(body.contains("<noscript><meta http-equiv=\"refresh\""));
    assert!(body.contains("/static/live-log.js"));

    let (code, body) = get(&fx.st, &format!("/jobs/{}", fx.e)).await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains(&format!(
        "Not built because its dependency <a href=\"/jobs/{}\">",
        fx.a
    )));
    assert!(
        !body.contains("live-log.js"),
        "a finished job needs no live log"
    );
    assert!(body.contains("No log recorded."));

    let (_, body) = get(&fx.st, &format!("/jobs/{}", fx.a)).await;
    assert!(body.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
    assert!(!body.contains("<script>alert"));
    assert!(body.contains("nix build &#39;git+https://x/o/r?rev=c#packages.x86_64-linux.a&#39;"));

    assert_eq!(get(&fx.st, "/jobs/999").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&fx.st, "/jobs/999/log/stream").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn builders_and_drift_pages_should_render() {
    let fx = fixture();
    let (code, body) = get(&fx.st, "/builders").await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        body.contains("<h2>local <small class=\"ready\">ready</small></h2>"),
        "{body}"
    );
    let (code, body) = get(&fx.st, "/drift").await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("gh/o/r hook 7"));
    assert!(body.contains("https://ci/&#60;hooks&#62;"), "{body}");
    assert!(body.contains("(not shown)"));
    assert!(body.contains("1 still open"));
}

#[tokio::test]
async fn static_files_should_be_served_with_their_types() {
    let resp = router(fixture().st)
        .oneshot(
            Request::get("/static/reconix.css")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/css; charset=utf-8"
    );
    let (code, js) = get(&fixture().st, "/static/live-log.js").await;
    assert_eq!(code, StatusCode::OK);
    assert!(js.contains("EventSource"));
}

/// Returns the next event of an SSE body, skipping keep-alive comments.
async fn next_event(body: &mut axum::body::BodyDataStream) -> Option<String> {
    loop {
        // Virtual time: this fails the test instead of hanging it, without any real wait.
        let frame = tokio::time::timeout(Duration::from_secs(120), body.next())
            .await
            .expect("no event within two virtual minutes")?
            .unwrap();
        let text = String::from_utf8(frame.to_vec()).unwrap();
        if !text.starts_with(':') {
            return Some(text);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn log_stream_should_send_growth_then_end_once_the_job_is_terminal() {
    let fx = fixture();
    let resp = router(fx.st.clone())
        .oneshot(
            Request::get(format!("/jobs/{}/log/stream", fx.f))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();

    let first = next_event(&mut body).await.unwrap();
    assert_eq!(first, "event: log\nid: 9\ndata: line one\ndata: \n\n");

    // Growth: a complete coloured line is sent; the unfinished one waits for its newline.
    let append = |text: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&fx.log)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    append("\x1b[32mline <two>\x1b[0m\npart");
    let second = next_event(&mut body).await.unwrap();
    assert!(
        second.starts_with(
            "event: log\nid: 29\ndata: <span class=\"ansi-fg2\">line &lt;two&gt;</span>\n"
        ),
        "{second}"
    );

    // The job ends: the rest of the file goes out, then `end`, then the stream closes.
    append("ial");
    let f = fx.f;
    fx.st
        .status
        .call(move |db| db.set_job_state(f, JobState::Succeeded, None, T))
        .await
        .unwrap();
    let third = next_event(&mut body).await.unwrap();
    assert!(third.contains("data: partial\n"), "{third}");
    assert_eq!(
        next_event(&mut body).await.unwrap(),
        "event: end\ndata: end\n\n"
    );
    assert_eq!(next_event(&mut body).await, None);
}

#[tokio::test(start_paused = true)]
async fn log_stream_should_resume_at_the_last_event_id() {
    let fx = fixture();
    std::fs::write(&fx.log, "line one\nline two\n").unwrap();
    let f = fx.f;
    fx.st
        .status
        .call(move |db| db.set_job_state(f, JobState::Failed, Some("x"), T))
        .await
        .unwrap();
    let resp = router(fx.st.clone())
        .oneshot(
            Request::get(format!("/jobs/{}/log/stream?offset=0", fx.f))
                .header("last-event-id", "9")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body().into_data_stream();
    assert_eq!(
        next_event(&mut body).await.unwrap(),
        "event: log\nid: 18\ndata: line two\ndata: \n\n"
    );
    assert_eq!(
        next_event(&mut body).await.unwrap(),
        "event: end\ndata: end\n\n"
    );
}

#[tokio::test]
async fn aggregate_job_page_and_api_should_list_the_constituents_with_their_states() {
    let mut db = StatusDb::open_memory().unwrap();
    let repo = db.upsert_repo(&RepoKey::parse("gh/o/r").unwrap()).unwrap();
    let (eval, _) = db
        .insert_evaluation(
            repo,
            "refs/heads/main",
            &"d".repeat(40),
            "git+https://x/o/r?rev=d",
            T,
        )
        .unwrap();
    let mut agg = job(3, &pkg("agg"), &[&pkg("a"), &pkg("b")]);
    agg.constituents = Some(vec![
        NewConstituent::Job(AttrPath::new(pkg("a")).unwrap()),
        NewConstituent::Job(AttrPath::new(pkg("b")).unwrap()),
        NewConstituent::Derivation(drv(9, "elsewhere")),
    ]);
    db.record_evaluation_result(
        eval,
        &[job(1, &pkg("a"), &[]), job(2, &pkg("b"), &[]), agg],
        T,
    )
    .unwrap();
    let a = finish(
        &mut db,
        eval,
        &pkg("a"),
        JobState::Succeeded,
        Some(BuildState::Succeeded),
        None,
    );
    let b = finish(
        &mut db,
        eval,
        &pkg("b"),
        JobState::Failed,
        Some(BuildState::Failed),
        Some("b broke"),
    );
    let agg = finish(
        &mut db,
        eval,
        &pkg("agg"),
        JobState::DependencyFailed,
        None,
        None,
    );
    let st = AppState::new(Status::new(db));

    let (code, body) = get(&st, &format!("/jobs/{agg}")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("<h2>Constituents</h2>"), "{body}");
    for (id, attr, state) in [(a, pkg("a"), "succeeded"), (b, pkg("b"), "failed")] {
        let line = format!(
            "<li><a href=\"/jobs/{id}\"><code>{attr}</code></a> <span class=\"{state}\">{state}</span></li>"
        );
        assert!(body.contains(&line), "{line} in {body}");
    }
    assert!(body.contains(&format!(
        "<li><code>{}</code> <span class=\"muted\">not a job of this evaluation</span></li>",
        drv(9, "elsewhere")
    )));
    // A job that is no aggregate has no such section.
    let (_, body) = get(&st, &format!("/jobs/{a}")).await;
    assert!(!body.contains("Constituents"));

    let (code, body) = get(&st, &format!("/api/v1/jobs/{agg}")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json["constituents"],
        serde_json::json!([
            {"kind": "job", "id": a.0, "attr": pkg("a"), "state": "succeeded"},
            {"kind": "job", "id": b.0, "attr": pkg("b"), "state": "failed"},
            {"kind": "derivation", "drv_path": drv(9, "elsewhere").to_string()},
        ])
    );
    let (_, body) = get(&st, &format!("/api/v1/jobs/{a}")).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json.get("constituents").is_none(), "{json}");
}

#[tokio::test]
async fn a_running_evaluation_should_show_its_progress_on_the_page_and_in_the_api() {
    let mut db = StatusDb::open_memory().unwrap();
    let repo = db.upsert_repo(&RepoKey::parse("gh/o/r").unwrap()).unwrap();
    let (id, _) = db
        .insert_evaluation(
            repo,
            "refs/heads/main",
            &"e".repeat(40),
            "git+https://x/r",
            T,
        )
        .unwrap();
    db.set_evaluation_state(id, reconix_status::EvaluationState::Evaluating, None, T)
        .unwrap();
    db.record_evaluation_listed(id, 20).unwrap();
    let streamed: Vec<reconix_status::NewStreamedJob> = (0..12)
        .map(|i| reconix_status::NewStreamedJob {
            job: job(i, &pkg(&format!("p{i}")), &[]),
            buildable: true,
        })
        .collect();
    db.record_streamed_jobs(id, &streamed, T).unwrap();
    let st = AppState::new(Status::new(db));

    let (code, body) = get(&st, &format!("/evaluations/{id}")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("evaluating: 12 of 20 attributes"), "{body}");
    assert!(
        body.contains("<progress max=\"20\" value=\"12\">60%</progress>"),
        "{body}"
    );
    let (code, body) = get(&st, &format!("/api/v1/evaluations/{id}")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["progress"],
        serde_json::json!({"evaluated": 12, "attributes": 20})
    );
    assert_eq!(v["jobs"].as_array().map(Vec::len), Some(12));
}
