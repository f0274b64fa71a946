//! Read models for the JSON API and the CLI: serde structs with snake_case fields, built by a
//! few queries each. The web crate serializes them; the CLI deserializes the same types.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use reconix_spec::JobMeta;
use reconix_spec::names::{AttrPath, BuilderName, RepoKey, StorePath, System, Timestamp};
use serde::{Deserialize, Serialize};

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::row::{get, non_negative, parse, parse_opt, parse_repo_key};
use crate::types::{
    BuildId, BuildProduct, BuildState, Constituent, EvaluationId, EvaluationState, JobId, JobState,
};

/// One evaluation in a list: what ran, where it stands, and how many jobs are in each state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluationSummary {
    /// The evaluation's id.
    pub id: EvaluationId,
    /// The repository, serialized as `"<forge>/<repo>"`.
    pub repo: RepoKey,
    /// The full ref name, e.g. `refs/heads/main`.
    #[serde(rename = "ref")]
    pub ref_name: String,
    /// The evaluated commit.
    pub rev: String,
    /// Where the evaluation stands.
    pub state: EvaluationState,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last entered `evaluating`.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal state.
    pub finished_at: Option<Timestamp>,
    /// The number of jobs per state; states without jobs are absent.
    pub job_counts: BTreeMap<JobState, u64>,
    /// How far the evaluation got, once its attributes were listed (absent for evaluations
    /// recorded before evaluations were streamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<EvaluationProgress>,
}

/// How far an evaluation got: `evaluated` of `attributes` (while it runs, "evaluating: N of M
/// attributes"). `evaluated` counts the jobs recorded, which can exceed `attributes` when a
/// listed part of the tree fails as a whole and becomes several jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluationProgress {
    /// The attributes evaluated (jobs recorded) so far.
    pub evaluated: u64,
    /// The attributes listed to evaluate.
    pub attributes: u64,
}

impl EvaluationProgress {
    /// Returns the progress stored in an evaluation's `attributes` and `evaluated` columns:
    /// `None` until its attributes are listed.
    pub(crate) fn from_columns(attributes: Option<i64>, evaluated: i64) -> Option<Self> {
        attributes.map(|attributes| Self {
            attributes: u64::try_from(attributes).unwrap_or(0),
            evaluated: u64::try_from(evaluated).unwrap_or(0),
        })
    }

    /// Returns the evaluated attributes as a percentage of those listed, at most 100.
    pub fn percent(&self) -> u64 {
        (self.evaluated.saturating_mul(100) / self.attributes.max(1)).min(100)
    }
}

/// One evaluation with all its jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluationDetail {
    /// The summary fields, inlined into the same JSON object.
    #[serde(flatten)]
    pub summary: EvaluationSummary,
    /// The flake reference passed to Nix.
    pub flake_ref: String,
    /// Why the evaluation as a whole failed, when it did.
    pub error: Option<String>,
    /// The evaluation that superseded this one, if any.
    pub superseded_by: Option<EvaluationId>,
    /// Its jobs, in id order.
    pub jobs: Vec<JobView>,
}

/// One job as shown by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id.
    pub id: JobId,
    /// The full attribute path.
    pub attr: AttrPath,
    /// A display name (usually the derivation name).
    pub name: String,
    /// Its derivation; `null` for `eval-failed` jobs.
    pub drv_path: Option<StorePath>,
    /// The system it builds for (`null` for an `eval-failed` job whose system is unknown).
    pub system: Option<System>,
    /// Where it stands.
    pub state: JobState,
    /// The evaluation or build error, when there is one.
    pub error: Option<String>,
    /// Output name to store path.
    pub outputs: reconix_spec::Outputs,
    /// The jobs of the same evaluation it depends on.
    pub deps: Vec<JobId>,
    /// The build of its drv, when there is one (shared by every job with the same drv).
    pub build: Option<BuildView>,
    /// What reconix uses of its derivation's `meta` (description, homepage, license,
    /// maintainers, timeout, maxSilent, schedulingPriority); absent when empty.
    #[serde(default, skip_serializing_if = "JobMeta::is_empty")]
    pub meta: JobMeta,
    /// Whether a build log can be fetched for it.
    pub log_available: bool,
    /// When it last entered `building`.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal state.
    pub finished_at: Option<Timestamp>,
    /// For an aggregate job: its constituents with their states, in the order written; absent
    /// for any other job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constituents: Option<Vec<Constituent>>,
}

/// The build of a job's drv as shown by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildView {
    /// The build's id: equal for every job that shares the drv.
    pub id: BuildId,
    /// Where the build stands.
    pub state: BuildState,
    /// How many times it was started.
    pub attempts: u32,
    /// The builder of its last attempt: `local` or an agent's name.
    pub builder: Option<BuilderName>,
    /// The exit code of `nix-store --realise`, once it ended.
    pub exit_code: Option<i32>,
    /// When its last attempt started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// The total NAR size of its outputs' closure in bytes, once it succeeded and was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closure_size_bytes: Option<u64>,
    /// Its outputs exist but say the build failed (`nix-support/failed`): its jobs are
    /// `failed`, its outputs kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed_with_output: bool,
    /// The release name its outputs give (`nix-support/hydra-release-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_name: Option<String>,
    /// The products its outputs list (`nix-support/hydra-build-products`), in order; the
    /// n-th (from 0) is downloaded from `/api/v1/jobs/{id}/products/{n}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<BuildProduct>,
}

/// Everything `reconix status` shows: loop health, the newest evaluations, job counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusOverview {
    /// Health of every loop.
    pub loops: Vec<LoopSummary>,
    /// The newest evaluations, newest first.
    pub evaluations: Vec<EvaluationSummary>,
    /// Jobs per state over all evaluations.
    pub job_counts: BTreeMap<JobState, u64>,
    /// When the daemon last met a full or failing state directory, if that was within the last
    /// minute: builds wait and deliveries are refused (503) until space returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_full_at: Option<Timestamp>,
    /// Why the spec file was rejected at its last reload, while the daemon keeps the previous
    /// spec; absent after a good reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_error: Option<String>,
}

/// Health of one loop as shown by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopSummary {
    /// The loop's name, e.g. `builds`.
    pub name: String,
    /// True when its last run succeeded.
    pub healthy: bool,
    /// How many runs were recorded.
    pub runs: u64,
    /// When the last run ended.
    pub last_run_at: Option<Timestamp>,
    /// When the last successful run ended.
    pub last_success_at: Option<Timestamp>,
    /// The error of the last failed run, possibly before the last success.
    pub last_error: Option<String>,
    /// Failed runs since the last success.
    pub consecutive_failures: u32,
    /// When the loop plans to run next.
    pub next_run_at: Option<Timestamp>,
}

impl StatusDb {
    /// Returns the `limit` newest evaluations of all repositories, newest first.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn evaluation_list(&self, limit: u32) -> Result<Vec<EvaluationSummary>> {
        self.evaluation_summaries("evaluation_list", "ORDER BY e.id DESC LIMIT ?1", [limit])
    }

    /// Summarizes the evaluations (alias `e`) that `selection` picks, in its order, with their
    /// job counts, in one read transaction. `selection` is the rest of a `SELECT … FROM
    /// evaluations e` (`WHERE`, `ORDER BY`, `LIMIT`), with `params` bound to it.
    pub(crate) fn evaluation_summaries<P: rusqlite::Params + Copy>(
        &self,
        op: &'static str,
        selection: &str,
        params: P,
    ) -> Result<Vec<EvaluationSummary>> {
        let _snapshot = self.read(op)?;
        let mut counts: HashMap<i64, BTreeMap<JobState, u64>> = HashMap::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "SELECT j.evaluation_id, j.state, count(*) FROM jobs j \
                     WHERE j.evaluation_id IN (SELECT e.id FROM evaluations e {selection}) \
                     GROUP BY j.evaluation_id, j.state"
                ))
                .op(op)?;
            let mut rows = stmt.query(params).op(op)?;
            while let Some(row) = rows.next().op(op)? {
                let state: JobState = parse("jobs", "state", get(row, 1, op)?)?;
                counts
                    .entry(get(row, 0, op)?)
                    .or_default()
                    .insert(state, non_negative("jobs", "count", get(row, 2, op)?)?);
            }
        }
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT e.id, r.forge, r.name, e.ref, e.rev, e.state, e.created_at, \
                 e.started_at, e.finished_at, e.attributes, e.evaluated \
                 FROM evaluations e JOIN repos r ON r.id = e.repo_id \
                 {selection}"
            ))
            .op(op)?;
        let mut rows = stmt.query(params).op(op)?;
        let mut list = Vec::new();
        while let Some(row) = rows.next().op(op)? {
            let id: i64 = get(row, 0, op)?;
            list.push(EvaluationSummary {
                id: EvaluationId(id),
                repo: parse_repo_key(get(row, 1, op)?, get(row, 2, op)?)?,
                ref_name: get(row, 3, op)?,
                rev: get(row, 4, op)?,
                state: parse("evaluations", "state", get(row, 5, op)?)?,
                created_at: Timestamp(get(row, 6, op)?),
                started_at: get::<Option<i64>>(row, 7, op)?.map(Timestamp),
                finished_at: get::<Option<i64>>(row, 8, op)?.map(Timestamp),
                job_counts: counts.remove(&id).unwrap_or_default(),
                progress: EvaluationProgress::from_columns(get(row, 9, op)?, get(row, 10, op)?),
            });
        }
        Ok(list)
    }

    /// Returns evaluation `id` with all its jobs, if it exists.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn evaluation_detail(&self, id: EvaluationId) -> Result<Option<EvaluationDetail>> {
        const OP: &str = "evaluation_detail";
        let _snapshot = self.read(OP)?;
        let Some(eval) = self.evaluation(id)? else {
            return Ok(None);
        };
        let mut job_counts = BTreeMap::new();
        let jobs = self
            .query_job_details(OP, "j.evaluation_id = ?1", [id.0])?
            .into_iter()
            .map(|detail| {
                *job_counts.entry(detail.job.state).or_insert(0) += 1;
                detail.job
            })
            .collect();
        Ok(Some(EvaluationDetail {
            summary: EvaluationSummary {
                id: eval.id,
                repo: eval.repo,
                ref_name: eval.ref_name,
                rev: eval.rev,
                state: eval.state,
                created_at: eval.created_at,
                started_at: eval.started_at,
                finished_at: eval.finished_at,
                job_counts,
                progress: self.evaluation_progress(id)?,
            },
            flake_ref: eval.flake_ref,
            error: eval.error,
            superseded_by: eval.superseded_by,
            jobs,
        }))
    }

    /// Returns the log file of the build of job `id`'s drv, if the job exists and a log was
    /// recorded. The file may since have been removed by log retention.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed job state.
    pub fn job_log_path(&self, id: JobId) -> Result<Option<PathBuf>> {
        Ok(self.job_log(id)?.and_then(|log| log.path))
    }

    /// Returns the health of every loop that has run, ordered by name.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// negative counter.
    pub fn loop_list(&self) -> Result<Vec<LoopSummary>> {
        Ok(self
            .loops()?
            .into_iter()
            .map(|l| LoopSummary {
                healthy: l.consecutive_failures == 0,
                name: l.name,
                runs: l.runs,
                last_run_at: l.last_run_at,
                last_success_at: l.last_success_at,
                last_error: l.last_error,
                consecutive_failures: l.consecutive_failures,
                next_run_at: l.next_run_at,
            })
            .collect())
    }

    /// Returns what `reconix status` shows: loops, the `limit` newest evaluations, job counts.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn overview(&self, limit: u32) -> Result<StatusOverview> {
        Ok(StatusOverview {
            loops: self.loop_list()?,
            evaluations: self.evaluation_list(limit)?,
            job_counts: self.job_counts()?,
            // Not in the database (which may be what is full): the daemon fills it in.
            storage_full_at: None,
            spec_error: None,
        })
    }

    /// Returns the number of jobs per state over all evaluations; states without jobs are
    /// absent.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for an
    /// unknown state.
    pub fn job_counts(&self) -> Result<BTreeMap<JobState, u64>> {
        const OP: &str = "job_counts";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, count(*) FROM jobs GROUP BY state")
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        let mut counts = BTreeMap::new();
        while let Some(row) = rows.next().op(OP)? {
            let n: i64 = get(row, 1, OP)?;
            counts.insert(
                parse("jobs", "state", get(row, 0, OP)?)?,
                u64::try_from(n).unwrap_or(0),
            );
        }
        Ok(counts)
    }
}

/// One job with the evaluation it belongs to: `GET /api/v1/jobs/{id}` and the items of
/// `GET /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDetail {
    /// The job's fields, inlined into the same JSON object.
    #[serde(flatten)]
    pub job: JobView,
    /// The evaluation the job belongs to.
    pub evaluation_id: EvaluationId,
}

/// Which jobs [`StatusDb::job_list`] returns: all filters are optional and combine with AND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobFilter {
    /// Only the jobs of this evaluation.
    pub evaluation: Option<EvaluationId>,
    /// Only the jobs in this state.
    pub state: Option<JobState>,
    /// How many jobs at most.
    pub limit: u32,
    /// How many matching jobs to skip first (in id order).
    pub offset: u64,
}

/// Where the log of a job's build is and whether it can still grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLog {
    /// The log file recorded for the build of the job's drv, if any. The file may since have
    /// been removed by log retention.
    pub path: Option<PathBuf>,
    /// True once the job is in a terminal state: its log will not grow any more.
    pub complete: bool,
}

impl StatusDb {
    /// Returns job `id` with its build and evaluation, if it exists.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn job_view(&self, id: JobId) -> Result<Option<JobDetail>> {
        Ok(self.job_details("job_view", "j.id = ?1", [id.0])?.pop())
    }

    /// Returns the jobs matching `filter`, in id order, at most `filter.limit` after skipping
    /// `filter.offset`.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn job_list(&self, filter: JobFilter) -> Result<Vec<JobDetail>> {
        // The page is chosen in a subquery because `query_jobs` appends its own ORDER BY.
        let offset = i64::try_from(filter.offset).unwrap_or(i64::MAX);
        self.job_details(
            "job_list",
            "j.id IN (SELECT id FROM jobs WHERE (?1 IS NULL OR evaluation_id = ?1) \
             AND (?2 IS NULL OR state = ?2) ORDER BY id LIMIT ?3 OFFSET ?4)",
            (
                filter.evaluation.map(|e| e.0),
                filter.state.map(JobState::as_str),
                i64::from(filter.limit),
                offset,
            ),
        )
    }

    /// Returns the log file of job `id` and whether the job is terminal, if the job exists.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed state.
    pub fn job_log(&self, id: JobId) -> Result<Option<JobLog>> {
        const OP: &str = "job_log";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT j.state, b.log_path FROM jobs j \
                 LEFT JOIN builds b ON b.drv_path = j.drv_path WHERE j.id = ?1",
            )
            .op(OP)?;
        let mut rows = stmt.query([id.0]).op(OP)?;
        let Some(row) = rows.next().op(OP)? else {
            return Ok(None);
        };
        let state: JobState = parse("jobs", "state", get(row, 0, OP)?)?;
        Ok(Some(JobLog {
            path: get::<Option<String>>(row, 1, OP)?.map(PathBuf::from),
            complete: state.is_terminal(),
        }))
    }

    /// Selects jobs (alias `j`) matching `filter` as [`JobDetail`]s, in one read transaction.
    fn job_details<P: rusqlite::Params + Copy>(
        &self,
        op: &'static str,
        filter: &str,
        params: P,
    ) -> Result<Vec<JobDetail>> {
        let _snapshot = self.read(op)?;
        self.query_job_details(op, filter, params)
    }

    /// Selects jobs (alias `j`) matching `filter` as [`JobDetail`]s, in id order, with the
    /// builds of their drvs; the caller holds the read transaction.
    fn query_job_details<P: rusqlite::Params + Copy>(
        &self,
        op: &'static str,
        filter: &str,
        params: P,
    ) -> Result<Vec<JobDetail>> {
        let jobs = self.query_jobs(op, filter, params)?;
        let mut builds: HashMap<i64, (BuildView, bool)> = HashMap::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "SELECT j.id, b.id, b.state, b.log_path IS NOT NULL, b.attempts, \
                     b.exit_code, b.started_at, b.finished_at, b.builder, b.closure_size_bytes, \
                     b.failed_with_output, b.release_name FROM jobs j \
                     JOIN builds b ON b.drv_path = j.drv_path WHERE {filter}"
                ))
                .op(op)?;
            let mut rows = stmt.query(params).op(op)?;
            while let Some(row) = rows.next().op(op)? {
                let attempts: i64 = get(row, 4, op)?;
                let view = BuildView {
                    id: BuildId(get(row, 1, op)?),
                    state: parse("builds", "state", get(row, 2, op)?)?,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    builder: parse_opt("builds", "builder", get(row, 8, op)?)?,
                    exit_code: get(row, 5, op)?,
                    started_at: get::<Option<i64>>(row, 6, op)?.map(Timestamp),
                    finished_at: get::<Option<i64>>(row, 7, op)?.map(Timestamp),
                    closure_size_bytes: get::<Option<i64>>(row, 9, op)?
                        .map(|n| non_negative("builds", "closure_size_bytes", n))
                        .transpose()?,
                    failed_with_output: get(row, 10, op)?,
                    release_name: get(row, 11, op)?,
                    products: Vec::new(),
                };
                builds.insert(get(row, 0, op)?, (view, get(row, 3, op)?));
            }
        }
        {
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "SELECT j.id, p.kind, p.subtype, p.path, p.default_path FROM jobs j \
                     JOIN builds b ON b.drv_path = j.drv_path \
                     JOIN build_products p ON p.build_id = b.id \
                     WHERE {filter} ORDER BY j.id, p.position"
                ))
                .op(op)?;
            let mut rows = stmt.query(params).op(op)?;
            while let Some(row) = rows.next().op(op)? {
                if let Some((build, _)) = builds.get_mut(&get::<i64>(row, 0, op)?) {
                    build.products.push(BuildProduct {
                        kind: get(row, 1, op)?,
                        subtype: get(row, 2, op)?,
                        path: get(row, 3, op)?,
                        default_path: get(row, 4, op)?,
                    });
                }
            }
        }
        let mut metas = self.query_job_metas(op, filter, params)?;
        Ok(jobs
            .into_iter()
            .map(|job| {
                let build = builds.remove(&job.id.0);
                JobDetail {
                    evaluation_id: job.evaluation_id,
                    job: JobView {
                        id: job.id,
                        attr: job.attr,
                        name: job.name,
                        drv_path: job.drv_path,
                        system: job.system,
                        state: job.state,
                        error: job.error,
                        outputs: job.outputs,
                        deps: job.deps,
                        log_available: build.as_ref().is_some_and(|b| b.1),
                        build: build.map(|b| b.0),
                        meta: metas.remove(&job.id).unwrap_or_default(),
                        started_at: job.started_at,
                        finished_at: job.finished_at,
                        constituents: job.constituents,
                    },
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use serde_json::json;

    use super::EvaluationDetail;
    use crate::testing::{at, building_eval, drv, eval, failed_job, job, with_deps};
    use crate::{BuildState, EvaluationId, JobId, JobState, StatusDb};

    fn fixture() -> (StatusDb, EvaluationId, EvaluationId) {
        let mut db = StatusDb::open_memory().unwrap();
        let old = building_eval(
            &mut db,
            "aaa",
            &[
                job(1, "lib"),
                with_deps(job(2, "app"), &["lib"]),
                failed_job("bad", "boom"),
            ],
        );
        let jobs = db.jobs_of_evaluation(old).unwrap();
        db.set_job_state(jobs[0].id, JobState::Succeeded, None, at(2))
            .unwrap();
        db.finish_build(
            &drv(1),
            BuildState::Succeeded,
            Some(0),
            None,
            Some(Path::new("/logs/1")),
            at(2),
        )
        .unwrap();
        db.upsert_build(&drv(2), None, BuildState::Running, at(3))
            .unwrap();
        let (_, new) = eval(&mut db, "bbb");
        (db, old, new)
    }

    #[test]
    fn evaluation_list_should_return_newest_first_with_job_counts() {
        let (db, old, new) = fixture();
        let list = db.evaluation_list(10).unwrap();
        assert_eq!(list.iter().map(|e| e.id).collect::<Vec<_>>(), [new, old]);
        assert!(list[0].job_counts.is_empty());
        assert_eq!(
            list[1].job_counts,
            BTreeMap::from([
                (JobState::Queued, 1),
                (JobState::Succeeded, 1),
                (JobState::EvalFailed, 1)
            ])
        );
        assert_eq!(db.evaluation_list(1).unwrap().len(), 1);
        let value = serde_json::to_value(&list[1]).unwrap();
        assert_eq!(value["id"], json!(old.0));
        assert_eq!(value["repo"], json!("gh/o/r"));
        assert_eq!(value["ref"], json!("refs/heads/main"));
        assert_eq!(value["rev"], json!("aaa"));
        assert_eq!(value["state"], json!("building"));
        assert_eq!(value["job_counts"]["eval-failed"], json!(1));
    }

    #[test]
    fn evaluation_detail_should_include_jobs_with_build_and_log_information() {
        let (db, old, _) = fixture();
        let detail = db.evaluation_detail(old).unwrap().unwrap();
        assert_eq!(detail.summary.rev, "aaa");
        assert_eq!(detail.flake_ref, "git+file:///r?rev=aaa");
        let [lib, app, bad] = &detail.jobs[..] else {
            panic!("expected three jobs: {:?}", detail.jobs);
        };
        assert_eq!(
            (
                lib.build.as_ref().map(|b| (b.state, b.attempts)),
                lib.log_available
            ),
            (Some((BuildState::Succeeded, 0)), true)
        );
        assert_eq!(
            (app.build.as_ref().map(|b| b.state), app.log_available),
            (Some(BuildState::Running), false)
        );
        assert_eq!(app.deps, [lib.id]);
        assert_eq!((bad.build.as_ref(), bad.drv_path.as_ref()), (None, None));
        assert_eq!(detail.summary.job_counts.values().sum::<u64>(), 3);

        let value = serde_json::to_value(&detail).unwrap();
        for key in ["id", "repo", "ref", "rev", "state", "jobs", "error"] {
            assert!(value.get(key).is_some(), "missing {key} in {value}");
        }
        let job = &value["jobs"][2];
        for key in ["id", "attr", "drv_path", "system", "state", "error"] {
            assert!(job.get(key).is_some(), "missing {key} in {job}");
        }
        assert_eq!(job["state"], json!("eval-failed"));
        assert_eq!(job["error"], json!("boom"));
        let back: EvaluationDetail = serde_json::from_value(value).unwrap();
        assert_eq!(back, detail);
        assert_eq!(db.evaluation_detail(EvaluationId(99)).unwrap(), None);
    }

    #[test]
    fn job_log_path_should_follow_the_job_to_its_build() {
        let (db, old, _) = fixture();
        let jobs = db.jobs_of_evaluation(old).unwrap();
        assert_eq!(
            db.job_log_path(jobs[0].id).unwrap().as_deref(),
            Some(Path::new("/logs/1"))
        );
        assert_eq!(db.job_log_path(jobs[1].id).unwrap(), None);
        assert_eq!(db.job_log_path(jobs[2].id).unwrap(), None);
        assert_eq!(db.job_log_path(JobId(99)).unwrap(), None);
    }

    #[test]
    fn job_counts_should_count_every_job_by_state() {
        let (db, _, _) = fixture();
        assert_eq!(
            db.job_counts().unwrap(),
            BTreeMap::from([
                (JobState::Queued, 1),
                (JobState::Succeeded, 1),
                (JobState::EvalFailed, 1)
            ])
        );
    }

    #[test]
    fn loop_list_should_mark_failing_loops_unhealthy() {
        let (mut db, _, _) = fixture();
        db.record_loop_run("builds", Ok(()), None, at(1)).unwrap();
        db.record_loop_run("gcroots", Err("disk full"), None, at(1))
            .unwrap();
        let list = db.loop_list().unwrap();
        assert_eq!(
            list.iter()
                .map(|l| (l.name.as_str(), l.healthy))
                .collect::<Vec<_>>(),
            [("builds", true), ("gcroots", false)]
        );
        let value = serde_json::to_value(&list[1]).unwrap();
        assert_eq!(value["last_error"], json!("disk full"));
        assert_eq!(value["consecutive_failures"], json!(1));
    }

    #[test]
    fn job_view_should_carry_the_build_log_flag_and_evaluation() {
        let (mut db, old, _) = fixture();
        let jobs = db.jobs_of_evaluation(old).unwrap();
        let lib = db.job_view(jobs[0].id).unwrap().unwrap();
        assert_eq!(lib.job.build.as_ref().unwrap().closure_size_bytes, None);
        let drv = jobs[0].drv_path.clone().unwrap();
        db.record_closure_size(&drv, 123_456).unwrap();
        assert!(db.record_closure_size(&crate::testing::drv(99), 1).is_err());
        let lib = db.job_view(jobs[0].id).unwrap().unwrap();
        assert_eq!(
            lib.job.build.as_ref().unwrap().closure_size_bytes,
            Some(123_456)
        );
        assert_eq!(lib.evaluation_id, old);
        assert_eq!(lib.job.state, JobState::Succeeded);
        assert_eq!(
            lib.job.build.as_ref().map(|b| b.state),
            Some(BuildState::Succeeded)
        );
        assert!(lib.job.log_available);
        let app = db.job_view(jobs[1].id).unwrap().unwrap();
        assert_eq!(app.job.deps, [jobs[0].id]);
        assert!(!app.job.log_available);
        assert_eq!(db.job_view(JobId(99)).unwrap(), None);

        // The JSON is a job of the evaluation detail plus its evaluation id.
        let value = serde_json::to_value(&lib).unwrap();
        let detail = db.evaluation_detail(old).unwrap().unwrap();
        let mut expected = serde_json::to_value(&detail.jobs[0]).unwrap();
        expected["evaluation_id"] = json!(old.0);
        assert_eq!(value, expected);
        let back: super::JobDetail = serde_json::from_value(value).unwrap();
        assert_eq!(back, lib);
    }

    #[test]
    fn job_list_should_filter_by_evaluation_and_state_and_page_in_id_order() {
        let (mut db, old, _) = fixture();
        let other = crate::testing::building_eval(&mut db, "ccc", &[job(7, "x"), job(8, "y")]);
        let ids = |filter| {
            db.job_list(filter)
                .unwrap()
                .iter()
                .map(|j| (j.evaluation_id, j.job.state))
                .collect::<Vec<_>>()
        };
        let all = super::JobFilter {
            limit: 100,
            ..super::JobFilter::default()
        };
        assert_eq!(ids(all).len(), 5);
        assert_eq!(
            ids(super::JobFilter {
                evaluation: Some(old),
                ..all
            }),
            [
                (old, JobState::Succeeded),
                (old, JobState::Queued),
                (old, JobState::EvalFailed)
            ]
        );
        assert_eq!(
            ids(super::JobFilter {
                state: Some(JobState::Queued),
                ..all
            }),
            [
                (old, JobState::Queued),
                (other, JobState::Queued),
                (other, JobState::Queued)
            ]
        );
        assert_eq!(
            ids(super::JobFilter {
                state: Some(JobState::Queued),
                evaluation: Some(other),
                limit: 1,
                offset: 1,
            }),
            [(other, JobState::Queued)]
        );
        assert!(ids(super::JobFilter { offset: 5, ..all }).is_empty());
        let listed = db.job_list(all).unwrap();
        assert!(listed.windows(2).all(|w| w[0].job.id < w[1].job.id));
        assert_eq!(listed[0].job.build.as_ref().map(|b| b.attempts), Some(0));
    }

    #[test]
    fn job_log_should_say_where_the_log_is_and_whether_the_job_ended() {
        let (mut db, old, _) = fixture();
        let jobs = db.jobs_of_evaluation(old).unwrap();
        let log = |db: &StatusDb, id| db.job_log(id).unwrap().map(|l| (l.path, l.complete));
        assert_eq!(
            log(&db, jobs[0].id),
            Some((Some(Path::new("/logs/1").to_owned()), true))
        );
        assert_eq!(log(&db, jobs[1].id), Some((None, false)));
        db.record_build_log(&drv(2), Path::new("/logs/2"), 10, at(4))
            .unwrap();
        assert_eq!(
            log(&db, jobs[1].id),
            Some((Some(Path::new("/logs/2").to_owned()), false))
        );
        assert_eq!(log(&db, jobs[2].id), Some((None, true)));
        assert_eq!(log(&db, JobId(99)), None);
    }
}
