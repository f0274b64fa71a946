//! Read models of the web pages: an evaluation's jobs one page at a time (failures first), a job
//! with its build and dependencies, a repository's evaluations, a pull request's evaluations,
//! and the pure comparison of a pull request's jobs with its base branch's.
//!
//! Pages of an evaluation are cut in SQL (`LIMIT`/`OFFSET` over a sort by [`JobGroup`]), so an
//! evaluation with 10,000 jobs costs one sort and 200 rows, not 10,000 parsed jobs.

use std::collections::BTreeMap;

use reconix_spec::JobMeta;
use reconix_spec::names::{AttrPath, System, Timestamp};
use serde::Serialize;

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::pull_requests::PullRequestRow;
use crate::row::{get, non_negative, parse, parse_opt};
use crate::types::{
    Build, BuildId, BuildProduct, BuildState, Evaluation, EvaluationId, EvaluationState, Job,
    JobId, JobState, RepoId, sql_list,
};
use crate::views::{BuildView, EvaluationSummary};

/// How the pages group an evaluation's jobs; the declaration order is the display order,
/// failures first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobGroup {
    /// The job's build failed.
    Failed,
    /// The job failed because its build exceeded a timeout (job `failed`, build `timed-out`).
    TimedOut,
    /// A job it depends on did not succeed.
    DependencyFailed,
    /// The attribute failed to evaluate.
    EvalFailed,
    /// Its build is running.
    Building,
    /// Waiting for dependencies or a builder.
    Queued,
    /// Built.
    Succeeded,
    /// Cancelled before it was built.
    Cancelled,
    /// Not built on purpose (a system the repository does not build).
    Skipped,
}

/// The SQL that ranks a job (alias `j`, its build `b`) by [`JobGroup`]; keep in step with
/// [`JobGroup::from_rank`].
const GROUP_RANK: &str = "CASE j.state \
     WHEN 'failed' THEN (CASE WHEN b.state = 'timed-out' THEN 1 ELSE 0 END) \
     WHEN 'dependency-failed' THEN 2 WHEN 'eval-failed' THEN 3 WHEN 'building' THEN 4 \
     WHEN 'queued' THEN 5 WHEN 'succeeded' THEN 6 WHEN 'skipped' THEN 8 ELSE 7 END";

impl JobGroup {
    /// Lists every group in display order.
    pub const ALL: &'static [Self] = &[
        Self::Failed,
        Self::TimedOut,
        Self::DependencyFailed,
        Self::EvalFailed,
        Self::Building,
        Self::Queued,
        Self::Succeeded,
        Self::Cancelled,
        Self::Skipped,
    ];

    /// Returns the group of a job in `state` whose build is in `build`.
    pub fn of(state: JobState, build: Option<BuildState>) -> Self {
        match state {
            JobState::Failed if build == Some(BuildState::TimedOut) => Self::TimedOut,
            JobState::Failed => Self::Failed,
            JobState::DependencyFailed => Self::DependencyFailed,
            JobState::EvalFailed => Self::EvalFailed,
            JobState::Building => Self::Building,
            JobState::Queued => Self::Queued,
            JobState::Succeeded => Self::Succeeded,
            JobState::Cancelled => Self::Cancelled,
            JobState::Skipped => Self::Skipped,
        }
    }

    /// Returns the kebab-case name, also the CSS class of the pages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::TimedOut => "timed-out",
            Self::DependencyFailed => "dependency-failed",
            Self::EvalFailed => "eval-failed",
            Self::Building => "building",
            Self::Queued => "queued",
            Self::Succeeded => "succeeded",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }

    /// Returns true for the groups that count as a failure of the evaluation: the groups of the
    /// job states [`JobState::is_failing`] names (a test keeps the two in step).
    pub const fn is_failure(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::TimedOut | Self::DependencyFailed | Self::EvalFailed
        )
    }

    fn from_rank(rank: i64) -> Self {
        usize::try_from(rank)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
            .unwrap_or(Self::Cancelled)
    }
}

/// Another job of the same evaluation, named and stated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRef {
    /// The job.
    pub id: JobId,
    /// Its attribute path.
    pub attr: AttrPath,
    /// Where it stands.
    pub state: JobState,
}

/// One job as a row of the evaluation page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PageJob {
    /// The job's id.
    pub id: JobId,
    /// The full attribute path.
    pub attr: AttrPath,
    /// A display name (usually the derivation name).
    pub name: String,
    /// The system it builds for, when known.
    pub system: Option<System>,
    /// Where it stands.
    pub state: JobState,
    /// Its group on the page.
    pub group: JobGroup,
    /// The evaluation or build error, when there is one.
    pub error: Option<String>,
    /// When it last entered `building`.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal state.
    pub finished_at: Option<Timestamp>,
    /// The build of its drv, when there is one.
    pub build: Option<BuildView>,
    /// Whether a build log was recorded.
    pub log_available: bool,
    /// For a `dependency-failed` job: a dependency that did not succeed, one that failed itself
    /// in preference to one that is only `dependency-failed` too.
    pub failed_dependency: Option<JobRef>,
}

/// One page of an evaluation's jobs, with the group counts of all its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluationJobsPage {
    /// The evaluation.
    pub evaluation: Evaluation,
    /// How far it got, once its attributes were listed.
    pub progress: Option<crate::views::EvaluationProgress>,
    /// The number of jobs per group over the whole evaluation; empty groups are absent.
    pub groups: BTreeMap<JobGroup, u64>,
    /// The number of jobs of the evaluation.
    pub total: u64,
    /// The jobs of this page, by group, then id.
    pub jobs: Vec<PageJob>,
}

/// A job with everything its page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPage {
    /// The job.
    pub job: Job,
    /// Its evaluation.
    pub evaluation: Evaluation,
    /// The build of its drv, if one was recorded.
    pub build: Option<Build>,
    /// Its dependencies, by id.
    pub dependencies: Vec<JobRef>,
    /// What reconix uses of its derivation's `meta`.
    pub meta: JobMeta,
    /// The products its build's outputs list, in order (empty without a build).
    pub products: Vec<BuildProduct>,
}

/// The state of one attribute in an evaluation (the pull request page compares them).
pub type JobOutcome = JobRef;

/// The full ref names under which a pull request's head is evaluated (GitLab, others).
fn pull_request_refs(number: u64) -> [String; 2] {
    [
        format!("refs/merge-requests/{number}/head"),
        format!("refs/pull/{number}/head"),
    ]
}

impl StatusDb {
    /// Returns the jobs of evaluation `id` ordered by [`JobGroup`], then id, skipping `offset`
    /// and returning at most `limit`, with the group counts of all its jobs; `None` when the
    /// evaluation does not exist.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn evaluation_jobs_page(
        &self,
        id: EvaluationId,
        limit: u32,
        offset: u64,
    ) -> Result<Option<EvaluationJobsPage>> {
        const OP: &str = "evaluation_jobs_page";
        let _snapshot = self.read(OP)?;
        let Some(evaluation) = self.evaluation(id)? else {
            return Ok(None);
        };
        let mut groups = BTreeMap::new();
        let mut total = 0;
        {
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {GROUP_RANK} AS rank, count(*) FROM jobs j \
                     LEFT JOIN builds b ON b.drv_path = j.drv_path \
                     WHERE j.evaluation_id = ?1 GROUP BY rank"
                ))
                .op(OP)?;
            let mut rows = stmt.query([id.0]).op(OP)?;
            while let Some(row) = rows.next().op(OP)? {
                let n: u64 = non_negative("jobs", "count", get(row, 1, OP)?)?;
                total += n;
                groups.insert(JobGroup::from_rank(get(row, 0, OP)?), n);
            }
        }
        // The page is cut in the CTE; the dependency lookup then runs for its rows only.
        let blocking = sql_list(JobState::BLOCKING);
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "WITH page AS (SELECT j.id AS id, {GROUP_RANK} AS rank FROM jobs j \
                   LEFT JOIN builds b ON b.drv_path = j.drv_path \
                   WHERE j.evaluation_id = ?1 ORDER BY rank, j.id LIMIT ?2 OFFSET ?3) \
                 SELECT j.id, j.attr, j.name, j.system, j.state, j.error, j.started_at, \
                   j.finished_at, page.rank, b.id, b.state, b.attempts, b.builder, b.exit_code, \
                   b.started_at, b.finished_at, b.log_path IS NOT NULL, d.id, d.attr, d.state, \
                   b.closure_size_bytes, b.failed_with_output, b.release_name \
                 FROM page JOIN jobs j ON j.id = page.id \
                 LEFT JOIN builds b ON b.drv_path = j.drv_path \
                 LEFT JOIN jobs d ON j.state = 'dependency-failed' AND d.id = ( \
                   SELECT x.id FROM job_deps jd JOIN jobs x ON x.id = jd.dep_job_id \
                   WHERE jd.job_id = j.id \
                     AND x.state IN {blocking} \
                   ORDER BY x.state = 'dependency-failed', x.id LIMIT 1) \
                 ORDER BY page.rank, j.id"
            ))
            .op(OP)?;
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let mut rows = stmt
            .query(rusqlite::params![id.0, i64::from(limit), offset])
            .op(OP)?;
        let mut jobs = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            let build = match get::<Option<i64>>(row, 9, OP)? {
                Some(build_id) => Some(BuildView {
                    id: BuildId(build_id),
                    state: parse("builds", "state", get(row, 10, OP)?)?,
                    attempts: non_negative("builds", "attempts", get(row, 11, OP)?)?,
                    builder: parse_opt("builds", "builder", get(row, 12, OP)?)?,
                    exit_code: get(row, 13, OP)?,
                    started_at: get::<Option<i64>>(row, 14, OP)?.map(Timestamp),
                    finished_at: get::<Option<i64>>(row, 15, OP)?.map(Timestamp),
                    closure_size_bytes: get::<Option<i64>>(row, 20, OP)?
                        .map(|n| non_negative("builds", "closure_size_bytes", n))
                        .transpose()?,
                    failed_with_output: get(row, 21, OP)?,
                    release_name: get(row, 22, OP)?,
                    products: Vec::new(),
                }),
                None => None,
            };
            let failed_dependency = match get::<Option<i64>>(row, 17, OP)? {
                Some(_) => Some(job_ref(row, 17, OP)?),
                None => None,
            };
            jobs.push(PageJob {
                id: JobId(get(row, 0, OP)?),
                attr: parse("jobs", "attr", get(row, 1, OP)?)?,
                name: get(row, 2, OP)?,
                system: parse_opt("jobs", "system", get(row, 3, OP)?)?,
                state: parse("jobs", "state", get(row, 4, OP)?)?,
                error: get(row, 5, OP)?,
                started_at: get::<Option<i64>>(row, 6, OP)?.map(Timestamp),
                finished_at: get::<Option<i64>>(row, 7, OP)?.map(Timestamp),
                group: JobGroup::from_rank(get(row, 8, OP)?),
                log_available: build.is_some() && get::<bool>(row, 16, OP)?,
                build,
                failed_dependency,
            });
        }
        Ok(Some(EvaluationJobsPage {
            progress: self.evaluation_progress(evaluation.id)?,
            evaluation,
            groups,
            total,
            jobs,
        }))
    }

    /// Returns job `id` with its evaluation, build and dependencies, if it exists.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn job_page(&self, id: JobId) -> Result<Option<JobPage>> {
        const OP: &str = "job_page";
        let _snapshot = self.read(OP)?;
        let Some(job) = self.query_jobs(OP, "j.id = ?1", [id.0])?.pop() else {
            return Ok(None);
        };
        let Some(evaluation) = self.evaluation(job.evaluation_id)? else {
            return Ok(None);
        };
        let build = match &job.drv_path {
            Some(drv) => self.build_by_drv(drv)?,
            None => None,
        };
        let dependencies = self.query_job_refs(
            OP,
            "SELECT d.id, d.attr, d.state FROM job_deps jd JOIN jobs d ON d.id = jd.dep_job_id \
             WHERE jd.job_id = ?1 ORDER BY d.id",
            id.0,
        )?;
        let meta = self
            .query_job_metas(OP, "j.id = ?1", [id.0])?
            .remove(&id)
            .unwrap_or_default();
        let products = match &build {
            Some(b) => self.build_products(&b.drv_path)?,
            None => Vec::new(),
        };
        Ok(Some(JobPage {
            job,
            evaluation,
            build,
            dependencies,
            meta,
            products,
        }))
    }

    /// Returns the `limit` newest evaluations of `repo`, newest first, with their job counts.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn repo_evaluations(&self, repo: RepoId, limit: u32) -> Result<Vec<EvaluationSummary>> {
        self.evaluation_summaries(
            "repo_evaluations",
            "WHERE e.repo_id = ?1 ORDER BY e.id DESC LIMIT ?2",
            [repo.0, i64::from(limit)],
        )
    }

    /// Returns the id and state of the evaluation of `rev` on `ref_name` of `repo`, if any.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for an
    /// unknown state.
    pub fn evaluation_of(
        &self,
        repo: RepoId,
        ref_name: &str,
        rev: &str,
    ) -> Result<Option<(EvaluationId, EvaluationState)>> {
        const OP: &str = "evaluation_of";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, state FROM evaluations WHERE repo_id = ?1 AND ref = ?2 AND rev = ?3",
            )
            .op(OP)?;
        let mut rows = stmt
            .query(rusqlite::params![repo.0, ref_name, rev])
            .op(OP)?;
        match rows.next().op(OP)? {
            Some(row) => Ok(Some((
                EvaluationId(get(row, 0, OP)?),
                parse("evaluations", "state", get(row, 1, OP)?)?,
            ))),
            None => Ok(None),
        }
    }

    /// Returns pull request `number` of `repo`, open or closed, if it was ever seen.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn pull_request(&self, repo: RepoId, number: u64) -> Result<Option<PullRequestRow>> {
        let Ok(number) = i64::try_from(number) else {
            return Ok(None);
        };
        Ok(self
            .query_pull_requests(
                "pull_request",
                "WHERE repo_id = ?1 AND number = ?2",
                [repo.0, number],
            )?
            .pop())
    }

    /// Returns the newest evaluation of pull request `number` of `repo`, preferring one of
    /// `head_sha` (the current head) over older heads.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn pull_request_evaluation(
        &self,
        repo: RepoId,
        number: u64,
        head_sha: &str,
    ) -> Result<Option<Evaluation>> {
        let [gitlab, other] = pull_request_refs(number);
        self.evaluation_selected(
            "pull_request_evaluation",
            "SELECT id FROM evaluations WHERE repo_id = ?1 AND ref IN (?2, ?3) \
             ORDER BY rev = ?4 DESC, id DESC LIMIT 1",
            rusqlite::params![repo.0, gitlab, other, head_sha],
        )
    }

    /// Returns the newest `finished` evaluation of branch `branch` (a name such as `main`, or a
    /// full ref) of `repo`.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn latest_finished_evaluation(
        &self,
        repo: RepoId,
        branch: &str,
    ) -> Result<Option<Evaluation>> {
        let full = if branch.starts_with("refs/") {
            branch.to_owned()
        } else {
            format!("refs/heads/{branch}")
        };
        self.evaluation_selected(
            "latest_finished_evaluation",
            "SELECT id FROM evaluations WHERE repo_id = ?1 AND ref = ?2 \
             AND state = 'finished' ORDER BY id DESC LIMIT 1",
            rusqlite::params![repo.0, full],
        )
    }

    /// Returns the evaluation whose id `sql`, with `params` bound to it, selects, if any.
    fn evaluation_selected<P: rusqlite::Params>(
        &self,
        op: &'static str,
        sql: &str,
        params: P,
    ) -> Result<Option<Evaluation>> {
        let id: Option<i64> = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| {
                rusqlite::OptionalExtension::optional(s.query_row(params, |r| r.get(0)))
            })
            .op(op)?;
        match id {
            Some(id) => self.evaluation(EvaluationId(id)),
            None => Ok(None),
        }
    }

    /// Returns the attribute and state of every job of evaluation `id`, by id.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn job_outcomes(&self, id: EvaluationId) -> Result<Vec<JobOutcome>> {
        self.query_job_refs(
            "job_outcomes",
            "SELECT id, attr, state FROM jobs WHERE evaluation_id = ?1 ORDER BY id",
            id.0,
        )
    }

    /// Runs `sql`, which selects a job's id, attribute and state, with `?1` bound to `param`.
    fn query_job_refs(&self, op: &'static str, sql: &str, param: i64) -> Result<Vec<JobRef>> {
        let mut stmt = self.conn.prepare_cached(sql).op(op)?;
        let mut rows = stmt.query([param]).op(op)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().op(op)? {
            out.push(job_ref(row, 0, op)?);
        }
        Ok(out)
    }
}

/// Reads a [`JobRef`] from the job id, attribute and state at columns `at`, `at + 1`, `at + 2`.
fn job_ref(row: &rusqlite::Row<'_>, at: usize, op: &'static str) -> Result<JobRef> {
    Ok(JobRef {
        id: JobId(get(row, at, op)?),
        attr: parse("jobs", "attr", get(row, at + 1, op)?)?,
        state: parse("jobs", "state", get(row, at + 2, op)?)?,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::testing::{at, building_eval, drv, failed_job, job, repo_key, with_deps};
    use crate::{PullRequestUpdate, StatusDb};

    /// An evaluation with one job per group, in reverse of the display order, so the page
    /// order is visibly the SQL's doing.
    fn mixed(db: &mut StatusDb) -> EvaluationId {
        let id = building_eval(
            db,
            "aaa",
            &[
                job(1, "cancelled"),
                job(2, "ok"),
                job(3, "waiting"),
                job(4, "running"),
                failed_job("evalfail", "boom"),
                with_deps(job(6, "depfail"), &["broken", "ok"]),
                job(7, "slow"),
                job(8, "broken"),
                job(9, "other-system"),
            ],
        );
        let jobs = db.jobs_of_evaluation(id).unwrap();
        let by = |n: &str| jobs.iter().find(|j| j.name == n).unwrap().id;
        let set = |db: &mut StatusDb, n: &str, s| {
            db.set_job_state(by(n), s, Some("why"), at(2)).unwrap();
        };
        set(db, "cancelled", JobState::Cancelled);
        set(db, "ok", JobState::Succeeded);
        set(db, "running", JobState::Building);
        set(db, "depfail", JobState::DependencyFailed);
        set(db, "slow", JobState::Failed);
        set(db, "broken", JobState::Failed);
        set(db, "other-system", JobState::Skipped);
        for (n, state) in [(7, BuildState::TimedOut), (8, BuildState::Failed)] {
            db.upsert_build(&drv(n), None, BuildState::Running, at(1))
                .unwrap();
            db.finish_build(&drv(n), state, Some(1), None, Some(Path::new("/l")), at(2))
                .unwrap();
        }
        id
    }

    #[test]
    fn jobs_page_should_put_failures_first_and_cut_the_page_in_sql() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = mixed(&mut db);
        let page = db.evaluation_jobs_page(id, 100, 0).unwrap().unwrap();
        let names: Vec<_> = page.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "broken",
                "slow",
                "depfail",
                "evalfail",
                "running",
                "waiting",
                "ok",
                "cancelled",
                "other-system"
            ]
        );
        let groups: Vec<_> = page.jobs.iter().map(|j| j.group).collect();
        assert_eq!(groups, JobGroup::ALL);
        assert_eq!(page.total, 9);
        assert_eq!(page.groups.get(&JobGroup::TimedOut), Some(&1));
        // The failing dependency is the one that failed, not the one that succeeded.
        let dep = page.jobs[2].failed_dependency.as_ref().unwrap();
        assert_eq!(
            (dep.attr.to_string(), dep.state),
            ("packages.x86_64-linux.broken".to_owned(), JobState::Failed)
        );
        assert_eq!(dep.id, page.jobs[0].id);
        assert!(page.jobs[0].log_available);
        assert_eq!(
            page.jobs[1].build.as_ref().map(|b| b.state),
            Some(BuildState::TimedOut)
        );

        let second = db.evaluation_jobs_page(id, 3, 3).unwrap().unwrap();
        let names: Vec<_> = second.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["evalfail", "running", "waiting"]);
        assert_eq!(second.total, 9);
        assert!(
            db.evaluation_jobs_page(id, 3, 30)
                .unwrap()
                .unwrap()
                .jobs
                .is_empty()
        );
        assert_eq!(
            db.evaluation_jobs_page(EvaluationId(99), 3, 0).unwrap(),
            None
        );
    }

    #[test]
    fn job_page_should_carry_evaluation_build_and_dependencies() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = mixed(&mut db);
        let page = db.evaluation_jobs_page(id, 100, 0).unwrap().unwrap();
        let depfail = page.jobs[2].id;
        let p = db.job_page(depfail).unwrap().unwrap();
        assert_eq!(p.evaluation.id, id);
        assert_eq!(p.evaluation.flake_ref, "git+file:///r?rev=aaa");
        let deps: Vec<_> = p.dependencies.iter().map(|d| d.state).collect();
        assert_eq!(deps, [JobState::Succeeded, JobState::Failed]);
        assert_eq!(p.build, None);
        let broken = db.job_page(page.jobs[0].id).unwrap().unwrap();
        assert_eq!(broken.build.map(|b| b.attempts), Some(1));
        assert_eq!(db.job_page(JobId(999)).unwrap(), None);
    }

    #[test]
    fn pull_request_lookups_should_find_the_head_and_the_base_evaluations() {
        let mut db = StatusDb::open_memory().unwrap();
        let base = building_eval(&mut db, "base1", &[failed_job("x", "e")]);
        let repo = db.repo_id(&repo_key("gh/o/r")).unwrap().unwrap();
        assert_eq!(
            db.latest_finished_evaluation(repo, "main")
                .unwrap()
                .map(|e| e.id),
            Some(base)
        );
        assert_eq!(
            db.latest_finished_evaluation(repo, "refs/heads/main")
                .unwrap()
                .map(|e| e.id),
            Some(base)
        );
        let (old, _) = db
            .insert_evaluation(repo, "refs/pull/4/head", "old", "f", at(1))
            .unwrap();
        assert_eq!(
            db.pull_request_evaluation(repo, 4, "new")
                .unwrap()
                .map(|e| e.id),
            Some(old)
        );
        let (new, _) = db
            .insert_evaluation(repo, "refs/pull/4/head", "new", "f", at(2))
            .unwrap();
        db.insert_evaluation(repo, "refs/pull/4/head", "newer-unknown", "f", at(3))
            .unwrap();
        assert_eq!(
            db.pull_request_evaluation(repo, 4, "new")
                .unwrap()
                .map(|e| e.id),
            Some(new),
            "the current head wins over a newer evaluation of another head"
        );
        assert_eq!(db.pull_request_evaluation(repo, 5, "new").unwrap(), None);
        assert_eq!(
            db.evaluation_of(repo, "refs/pull/4/head", "new").unwrap(),
            Some((new, EvaluationState::Queued))
        );

        assert_eq!(db.pull_request(repo, 4).unwrap(), None);
        let pr = PullRequestUpdate {
            number: 4,
            head_sha: "new".to_owned(),
            head_ref: "feature".to_owned(),
            base_ref: "main".to_owned(),
            author: Some("alice".to_owned()),
            from_fork: false,
            open: false,
        };
        db.upsert_pull_request(repo, &pr, at(1)).unwrap();
        let row = db.pull_request(repo, 4).unwrap().unwrap();
        assert_eq!((row.number, row.open), (4, false));
        let outcomes = db.job_outcomes(base).unwrap();
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].state, JobState::EvalFailed);
        let list = db.repo_evaluations(repo, 2).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].id > list[1].id);
    }

    #[test]
    fn failure_groups_should_be_the_groups_of_failing_job_states() {
        let builds = std::iter::once(None).chain(BuildState::ALL.iter().copied().map(Some));
        for build in builds {
            for state in JobState::ALL {
                assert_eq!(
                    JobGroup::of(*state, build).is_failure(),
                    state.is_failing(),
                    "{state:?} {build:?}"
                );
            }
        }
    }
}
