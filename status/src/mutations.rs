//! Changes an operator asks for through the API: rebuild a job, cancel an evaluation, re-run
//! an evaluation. Each is one write transaction that only moves rows back to states the loops
//! already handle; the caller then wakes the loops, which do the actual work.
//!
//! A refused request (a job that is still running, an evaluation that already ended) is an
//! [`Error::Invalid`] and changes nothing; an unknown id is an [`Error::NotFound`].

use std::collections::{BTreeSet, HashMap};

use reconix_spec::names::{RepoKey, StorePath, Timestamp};
use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::StatusDb;
use crate::error::{Error, QueryExt, Result};
use crate::evaluations::{cancel_jobs, evaluation_state, unfinished_jobs};
use crate::row::{get, parse, parse_repo_key};
use crate::types::{BuildState, EvaluationId, EvaluationState, JobId, JobState, sql_list};

/// The error recorded on an evaluation cancelled by [`StatusDb::cancel_evaluation`].
pub const CANCELLED_ERROR: &str = "cancelled through the API";

/// What [`StatusDb::rebuild_job`] changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuilt {
    /// The job asked for.
    pub job: JobId,
    /// Its evaluation.
    pub evaluation: EvaluationId,
    /// The evaluation's repository.
    pub repo: RepoKey,
    /// Every job put back to `queued`, in id order: the job, the failed jobs it waits on and
    /// the dependency-failed jobs that wait on those.
    pub requeued: Vec<JobId>,
    /// The drvs whose failed, timed-out or cancelled build was put back to `queued`.
    pub builds_reset: Vec<StorePath>,
}

/// What [`StatusDb::cancel_evaluation`] changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    /// The evaluation.
    pub evaluation: EvaluationId,
    /// Its repository.
    pub repo: RepoKey,
    /// The state it ended in: `finished` when it had jobs, `failed` when it was not evaluated yet
    /// (or had already timed out).
    pub state: EvaluationState,
    /// How many `queued` or `building` jobs were cancelled.
    pub cancelled_jobs: u64,
}

/// What [`StatusDb::rerun_evaluation`] changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rerun {
    /// The new, `queued` evaluation.
    pub evaluation: EvaluationId,
    /// The evaluation it replaces, which no longer exists.
    pub replaces: EvaluationId,
    /// Their repository.
    pub repo: RepoKey,
}

impl StatusDb {
    /// Puts the terminal job `id` back in the queue so the `builds` loop builds it again.
    ///
    /// In one transaction: the job and its (transitive) dependencies of the same evaluation
    /// that are `failed`, `dependency-failed` or `cancelled` become `queued`, and so do the
    /// `dependency-failed` jobs that (transitively) depend on any of them. The build of each
    /// requeued drv that is `failed`, `timed-out` or `cancelled` goes back to `queued` (keeping
    /// its attempts and last log, forgetting its builder so that any builder may take it); a
    /// `failed` build would otherwise be reused as final. A `finished` evaluation goes back to
    /// `building` and its commit statuses are unsettled, so the `statuses` loop reports again.
    ///
    /// # Errors
    /// Returns [`Error::NotFound`] for an unknown job; [`Error::Invalid`] when the job is
    /// `queued`, `building` or `succeeded`, failed to evaluate (it has no drv), or its
    /// evaluation is `failed` or `superseded` (re-run that instead); [`Error::Query`] when
    /// SQLite fails.
    pub fn rebuild_job(&mut self, id: JobId, now: Timestamp) -> Result<Rebuilt> {
        const OP: &str = "rebuild_job";
        let invalid = |reason: String| Error::Invalid { op: OP, reason };
        let tx = self.write(OP)?;
        let (evaluation, state): (i64, String) = tx
            .prepare_cached("SELECT evaluation_id, state FROM jobs WHERE id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([id.0], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .op(OP)?
            .ok_or_else(|| Error::NotFound {
                what: "job",
                key: id.to_string(),
            })?;
        let evaluation = EvaluationId(evaluation);
        let state: JobState = parse("jobs", "state", state)?;
        match state {
            JobState::Failed | JobState::DependencyFailed | JobState::Cancelled => {}
            JobState::Queued | JobState::Building => {
                return Err(invalid(format!("job {id} is {state}: it has not ended")));
            }
            JobState::Succeeded => {
                return Err(invalid(format!("job {id} succeeded: nothing to rebuild")));
            }
            JobState::EvalFailed => {
                return Err(invalid(format!(
                    "job {id} failed to evaluate and has no derivation; re-run evaluation \
                     {evaluation} instead"
                )));
            }
            JobState::Skipped => {
                return Err(invalid(format!(
                    "job {id} is skipped: its system is not one of the repository's `systems`"
                )));
            }
        }
        let eval_state = evaluation_state(&tx, evaluation, OP)?;
        match eval_state {
            EvaluationState::Building | EvaluationState::Finished => {}
            EvaluationState::Queued
            | EvaluationState::Evaluating
            | EvaluationState::Failed
            | EvaluationState::Superseded => {
                return Err(invalid(format!(
                    "evaluation {evaluation} is {eval_state}; re-run it instead"
                )));
            }
        }
        let repo = repo_of(&tx, evaluation, OP)?;
        let requeued = rebuild_set(id, &job_graph(&tx, evaluation, OP)?);

        let mut drvs = BTreeSet::new();
        {
            let mut requeue = tx
                .prepare_cached(
                    "UPDATE jobs SET state = 'queued', error = NULL, started_at = NULL, \
                     finished_at = NULL WHERE id = ?1 RETURNING drv_path",
                )
                .op(OP)?;
            for job in &requeued {
                let drv: Option<String> = requeue.query_row([job.0], |r| r.get(0)).op(OP)?;
                drvs.extend(drv);
            }
        }
        let mut builds_reset = Vec::new();
        {
            let mut reset = tx
                .prepare_cached(&format!(
                    "UPDATE builds SET state = 'queued', builder = NULL, exit_code = NULL, \
                     error = NULL, started_at = NULL, finished_at = NULL, queued_at = ?2 \
                     WHERE drv_path = ?1 AND state IN {}",
                    sql_list(BuildState::RERUNNABLE)
                ))
                .op(OP)?;
            for drv in drvs {
                if reset.execute(params![drv, now.0]).op(OP)? > 0 {
                    builds_reset.push(parse("builds", "drv_path", drv)?);
                }
            }
        }
        tx.prepare_cached(
            "UPDATE evaluations SET state = 'building', error = NULL, finished_at = NULL \
             WHERE id = ?1 AND state = 'finished'",
        )
        .and_then(|mut stmt| stmt.execute([evaluation.0]))
        .op(OP)?;
        // A settled evaluation is never looked at again by the `statuses` loop.
        tx.prepare_cached("DELETE FROM settled_statuses WHERE evaluation_id = ?1")
            .and_then(|mut stmt| stmt.execute([evaluation.0]))
            .op(OP)?;
        tx.commit().op(OP)?;
        Ok(Rebuilt {
            job: id,
            evaluation,
            repo,
            requeued,
            builds_reset,
        })
    }

    /// Ends the unfinished evaluation `id` at the operator's request.
    ///
    /// In one transaction its `queued` and `building` jobs become `cancelled`, and the
    /// evaluation ends with the error [`CANCELLED_ERROR`]: `finished` when it has jobs (it is
    /// `building`; its commit statuses then say cancelled), `failed` when it was still `queued`
    /// or `evaluating`, since the schema has no cancelled evaluation state and a `finished`
    /// evaluation without jobs would be reported as a success. Running builds that no live
    /// job needs any more are then stopped by the `builds` loop; a running evaluation is stopped
    /// by the `evaluations` loop (its evaluator processes killed), as a superseded one is.
    ///
    /// # Errors
    /// An evaluation that timed out (`failed`) with jobs left to build has those jobs cancelled
    /// and stays `failed` with its message.
    ///
    /// # Errors
    /// Returns [`Error::NotFound`] for an unknown evaluation, [`Error::Invalid`] when it has
    /// already ended (with nothing left to build), and [`Error::Query`] when SQLite fails.
    pub fn cancel_evaluation(&mut self, id: EvaluationId, now: Timestamp) -> Result<Cancelled> {
        const OP: &str = "cancel_evaluation";
        let tx = self.write(OP)?;
        let current = evaluation_state(&tx, id, OP)?;
        let state = match current {
            EvaluationState::Queued | EvaluationState::Evaluating => EvaluationState::Failed,
            EvaluationState::Building => EvaluationState::Finished,
            // Timed out with jobs left to build: those are cancelled, its message stays.
            EvaluationState::Failed if unfinished_jobs(&tx, id, OP)? > 0 => {
                let repo = repo_of(&tx, id, OP)?;
                let cancelled = cancel_jobs(&tx, id, now, OP)?;
                tx.commit().op(OP)?;
                return Ok(Cancelled {
                    evaluation: id,
                    repo,
                    state: current,
                    cancelled_jobs: cancelled,
                });
            }
            EvaluationState::Finished | EvaluationState::Failed | EvaluationState::Superseded => {
                return Err(Error::Invalid {
                    op: OP,
                    reason: format!("evaluation {id} is already {current}"),
                });
            }
        };
        let repo = repo_of(&tx, id, OP)?;
        let cancelled = cancel_jobs(&tx, id, now, OP)?;
        tx.prepare_cached(
            "UPDATE evaluations SET state = ?2, error = ?3, finished_at = ?4 WHERE id = ?1",
        )
        .and_then(|mut stmt| stmt.execute(params![id.0, state.as_str(), CANCELLED_ERROR, now.0]))
        .op(OP)?;
        tx.commit().op(OP)?;
        Ok(Cancelled {
            evaluation: id,
            repo,
            state,
            cancelled_jobs: cancelled,
        })
    }

    /// Replaces the ended evaluation `id` with a new `queued` evaluation of the same
    /// repository, ref, rev and flake reference, which the `evaluations` loop then runs.
    ///
    /// The schema allows one evaluation per repository, ref and rev (`UNIQUE (repo_id, ref,
    /// rev)`, which keeps the loop's insert idempotent), so the old row is deleted in the same
    /// transaction, and with it its jobs, GC-root rows and settled statuses; builds and their
    /// logs are shared per drv and stay, so a `succeeded` or `failed` build is reused (rebuild
    /// a job to run a failed build again). The new row gets an id above every existing one,
    /// and evaluations superseded by the old one now name the new one. A re-run of a commit
    /// that is no longer its ref's head is superseded again by the `evaluations` loop.
    ///
    /// # Errors
    /// Returns [`Error::NotFound`] for an unknown evaluation, [`Error::Invalid`] when it has not
    /// ended (cancel it first), and [`Error::Query`] when SQLite fails.
    pub fn rerun_evaluation(&mut self, id: EvaluationId, now: Timestamp) -> Result<Rerun> {
        const OP: &str = "rerun_evaluation";
        let tx = self.write(OP)?;
        let current = evaluation_state(&tx, id, OP)?;
        if !current.is_terminal() {
            return Err(Error::Invalid {
                op: OP,
                reason: format!("evaluation {id} is still {current}; cancel it first"),
            });
        }
        let repo = repo_of(&tx, id, OP)?;
        // Taken before the delete: were the old row the newest, SQLite would reuse its id.
        let new_id: i64 = tx
            .query_row("SELECT max(id) + 1 FROM evaluations", [], |r| r.get(0))
            .op(OP)?;
        let superseded: Vec<i64> = tx
            .prepare_cached("SELECT id FROM evaluations WHERE superseded_by = ?1")
            .and_then(|mut stmt| {
                stmt.query_map([id.0], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .op(OP)?;
        let (repo_id, ref_name, rev, flake_ref): (i64, String, String, String) = tx
            .prepare_cached(
                "DELETE FROM evaluations WHERE id = ?1 RETURNING repo_id, ref, rev, flake_ref",
            )
            .and_then(|mut stmt| {
                stmt.query_row([id.0], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            })
            .op(OP)?;
        tx.prepare_cached(
            "INSERT INTO evaluations (id, repo_id, ref, rev, flake_ref, state, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![new_id, repo_id, ref_name, rev, flake_ref, now.0])
        })
        .op(OP)?;
        {
            let mut repoint = tx
                .prepare_cached("UPDATE evaluations SET superseded_by = ?2 WHERE id = ?1")
                .op(OP)?;
            for old in superseded {
                repoint.execute([old, new_id]).op(OP)?;
            }
        }
        tx.commit().op(OP)?;
        Ok(Rerun {
            evaluation: EvaluationId(new_id),
            replaces: id,
            repo,
        })
    }
}

/// Returns the repository of evaluation `id` inside `tx`.
fn repo_of(tx: &Transaction<'_>, id: EvaluationId, op: &'static str) -> Result<RepoKey> {
    let (forge, name): (String, String) = tx
        .prepare_cached(
            "SELECT r.forge, r.name FROM evaluations e JOIN repos r ON r.id = e.repo_id \
             WHERE e.id = ?1",
        )
        .and_then(|mut stmt| stmt.query_row([id.0], |r| Ok((r.get(0)?, r.get(1)?))))
        .op(op)?;
    parse_repo_key(forge, name)
}

/// The jobs of one evaluation and their dependencies.
#[derive(Debug, Default)]
struct JobGraph {
    /// The state of every job.
    states: HashMap<JobId, JobState>,
    /// Every dependency edge, as `(job, dependency)`.
    edges: Vec<(JobId, JobId)>,
}

/// Returns the job graph of evaluation `id`.
fn job_graph(tx: &Transaction<'_>, id: EvaluationId, op: &'static str) -> Result<JobGraph> {
    let mut states = HashMap::new();
    {
        let mut stmt = tx
            .prepare_cached("SELECT id, state FROM jobs WHERE evaluation_id = ?1")
            .op(op)?;
        let mut rows = stmt.query([id.0]).op(op)?;
        while let Some(row) = rows.next().op(op)? {
            states.insert(
                JobId(get(row, 0, op)?),
                parse("jobs", "state", get(row, 1, op)?)?,
            );
        }
    }
    let mut stmt = tx
        .prepare_cached(
            "SELECT jd.job_id, jd.dep_job_id FROM job_deps jd \
             JOIN jobs j ON j.id = jd.job_id WHERE j.evaluation_id = ?1",
        )
        .op(op)?;
    let mut rows = stmt.query([id.0]).op(op)?;
    let mut edges = Vec::new();
    while let Some(row) = rows.next().op(op)? {
        edges.push((JobId(get(row, 0, op)?), JobId(get(row, 1, op)?)));
    }
    Ok(JobGraph { states, edges })
}

/// Returns the jobs a rebuild of `target` requeues, in id order (pure): `target`, its
/// transitive dependencies that did not succeed (`failed`, `dependency-failed`, `cancelled`:
/// without them `target` would at once be dependency-failed again), and the
/// `dependency-failed` jobs that transitively depend on any of those.
fn rebuild_set(target: JobId, graph: &JobGraph) -> Vec<JobId> {
    let JobGraph { states, edges } = graph;
    let retryable = |id: &JobId| {
        matches!(
            states.get(id),
            Some(JobState::Failed | JobState::DependencyFailed | JobState::Cancelled)
        )
    };
    // Upwards: through every dependency (a succeeded one may sit between two failed ones in
    // theory; walking it costs nothing), keeping the retryable ones.
    let mut seen = BTreeSet::from([target]);
    let mut stack = vec![target];
    while let Some(job) = stack.pop() {
        for &(_, dep) in edges.iter().filter(|(j, _)| *j == job) {
            if seen.insert(dep) {
                stack.push(dep);
            }
        }
    }
    let mut set: BTreeSet<JobId> = seen.into_iter().filter(retryable).collect();
    set.insert(target);
    // Downwards: the dependency-failed dependents of anything requeued.
    let mut stack: Vec<JobId> = set.iter().copied().collect();
    while let Some(job) = stack.pop() {
        for &(dependent, _) in edges.iter().filter(|(_, d)| *d == job) {
            if states.get(&dependent) == Some(&JobState::DependencyFailed) && set.insert(dependent)
            {
                stack.push(dependent);
            }
        }
    }
    set.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use reconix_spec::names::BuilderName;

    use super::{CANCELLED_ERROR, JobGraph, rebuild_set};
    use crate::testing::{T0, at, building_eval, drv, eval, failed_job, job, with_deps};
    use crate::{BuildState, Error, EvaluationId, EvaluationState, JobId, JobState, StatusDb};

    fn states(db: &StatusDb, id: EvaluationId) -> Vec<JobState> {
        db.jobs_of_evaluation(id)
            .unwrap()
            .iter()
            .map(|j| j.state)
            .collect()
    }

    /// An evaluation `lib ← app ← cli` (cli depends on app, app on lib) plus `doc` and an
    /// eval-failed `bad`, where lib's build failed on builder `a1`, so app and cli are
    /// dependency-failed, doc succeeded, and the evaluation finished and was settled.
    fn failed_chain(db: &mut StatusDb) -> (EvaluationId, Vec<JobId>) {
        let id = building_eval(
            db,
            "aaa",
            &[
                job(1, "lib"),
                with_deps(job(2, "app"), &["lib"]),
                with_deps(job(3, "cli"), &["app"]),
                job(4, "doc"),
                failed_job("bad", "boom"),
            ],
        );
        let jobs: Vec<JobId> = db
            .jobs_of_evaluation(id)
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        let a1 = BuilderName::new("a1").unwrap();
        db.upsert_build(&drv(1), Some(&a1), BuildState::Running, at(2))
            .unwrap();
        db.record_build_log(&drv(1), Path::new("/logs/lib"), 5, at(2))
            .unwrap();
        db.finish_build(
            &drv(1),
            BuildState::Failed,
            Some(1),
            Some("exit 1"),
            None,
            at(3),
        )
        .unwrap();
        db.finish_build(&drv(4), BuildState::Succeeded, Some(0), None, None, at(3))
            .unwrap();
        db.set_job_state(jobs[0], JobState::Failed, Some("exit 1"), at(3))
            .unwrap();
        db.set_job_state(jobs[1], JobState::DependencyFailed, Some("dep"), at(4))
            .unwrap();
        db.set_job_state(jobs[2], JobState::DependencyFailed, Some("dep"), at(4))
            .unwrap();
        db.set_job_state(jobs[3], JobState::Succeeded, None, at(4))
            .unwrap();
        assert!(db.finish_evaluation_if_done(id, at(5)).unwrap());
        db.settle_statuses(id, at(6)).unwrap();
        (id, jobs)
    }

    #[test]
    fn rebuild_set_should_take_failed_dependencies_and_dependency_failed_dependents() {
        let j = JobId;
        let edges = [(j(2), j(1)), (j(3), j(2)), (j(5), j(4)), (j(6), j(1))];
        let all = |s: &[(i64, JobState)]| JobGraph {
            states: s.iter().map(|&(id, st)| (JobId(id), st)).collect(),
            edges: edges.to_vec(),
        };
        use JobState::{Cancelled, DependencyFailed as DepFailed, Failed, Succeeded};
        let table: &[(&str, i64, JobGraph, Vec<JobId>)] = &[
            (
                "a failed root frees its dependency-failed chain",
                1,
                all(&[(1, Failed), (2, DepFailed), (3, DepFailed), (6, Succeeded)]),
                vec![j(1), j(2), j(3)],
            ),
            (
                "a dependency-failed job brings its failed dependency along",
                3,
                all(&[(1, Failed), (2, DepFailed), (3, DepFailed)]),
                vec![j(1), j(2), j(3)],
            ),
            (
                "succeeded dependencies stay, other chains are untouched",
                2,
                all(&[
                    (1, Succeeded),
                    (2, Cancelled),
                    (3, Cancelled),
                    (4, Failed),
                    (5, DepFailed),
                ]),
                vec![j(2)],
            ),
            (
                "a job without edges is alone",
                7,
                all(&[(7, Failed)]),
                vec![j(7)],
            ),
        ];
        for (name, target, graph, want) in table {
            assert_eq!(&rebuild_set(JobId(*target), graph), want, "{name}");
        }
    }

    #[test]
    fn rebuilding_a_failed_job_should_requeue_it_its_build_its_dependents_and_its_evaluation() {
        let mut db = StatusDb::open_memory().unwrap();
        let (id, jobs) = failed_chain(&mut db);
        let done = db.rebuild_job(jobs[0], at(10)).unwrap();
        assert_eq!(done.job, jobs[0]);
        assert_eq!(done.evaluation, id);
        assert_eq!(done.repo.to_string(), "gh/o/r");
        assert_eq!(done.requeued, jobs[..3]);
        assert_eq!(done.builds_reset, [drv(1)]);
        use JobState::{EvalFailed, Queued, Succeeded};
        assert_eq!(
            states(&db, id),
            [Queued, Queued, Queued, Succeeded, EvalFailed]
        );
        let lib = db.job(jobs[0]).unwrap().unwrap();
        assert_eq!((lib.error, lib.finished_at), (None, None));

        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!(
            (build.state, build.builder, build.attempts, build.queued_at),
            (BuildState::Queued, None, 1, at(10))
        );
        assert_eq!(
            (build.exit_code, build.error, build.finished_at),
            (None, None, None)
        );
        assert_eq!(build.log_path.as_deref(), Some(Path::new("/logs/lib")));
        // The succeeded build is not touched.
        let doc = db.build_by_drv(&drv(4)).unwrap().unwrap();
        assert_eq!(doc.state, BuildState::Succeeded);

        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!((e.state, e.finished_at), (EvaluationState::Building, None));
        let repo = db
            .repo_id(&crate::testing::repo_key("gh/o/r"))
            .unwrap()
            .unwrap();
        assert_eq!(db.unsettled_evaluations(repo).unwrap(), [id]);
        // The builds loop sees the jobs again, and may dispatch the drv anew.
        let sched: Vec<JobId> = db
            .schedulable_jobs()
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(sched, jobs[..3]);
        db.upsert_build(&drv(1), None, BuildState::Running, at(11))
            .unwrap();
    }

    #[test]
    fn rebuilding_a_dependency_failed_job_should_requeue_the_failed_dependency_too() {
        let mut db = StatusDb::open_memory().unwrap();
        let (id, jobs) = failed_chain(&mut db);
        let done = db.rebuild_job(jobs[2], at(10)).unwrap();
        assert_eq!(done.requeued, jobs[..3]);
        assert_eq!(done.builds_reset, [drv(1)]);
        assert_eq!(states(&db, id)[..3], [JobState::Queued; 3]);
    }

    #[test]
    fn rebuilding_a_cancelled_job_without_a_build_should_only_requeue_it() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = building_eval(&mut db, "aaa", &[job(1, "a"), job(2, "b")]);
        let cancelled = db.cancel_evaluation(id, at(2)).unwrap();
        assert_eq!(cancelled.cancelled_jobs, 2);
        let jobs = db.jobs_of_evaluation(id).unwrap();
        let done = db.rebuild_job(jobs[1].id, at(3)).unwrap();
        assert_eq!(
            (done.requeued, done.builds_reset),
            (vec![jobs[1].id], vec![])
        );
        assert_eq!(states(&db, id), [JobState::Cancelled, JobState::Queued]);
        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!((e.state, e.error), (EvaluationState::Building, None));
    }

    #[test]
    fn rebuild_should_refuse_jobs_that_did_not_end_badly_and_change_nothing() {
        let mut db = StatusDb::open_memory().unwrap();
        let (id, jobs) = failed_chain(&mut db);
        let before = db.evaluation_detail(id).unwrap();
        for (job, why) in [(jobs[3], "succeeded"), (jobs[4], "no derivation")] {
            let err = db.rebuild_job(job, at(10)).unwrap_err();
            assert!(
                matches!(&err, Error::Invalid { reason, .. } if reason.contains(why)),
                "{err:?}"
            );
        }
        assert_eq!(db.evaluation_detail(id).unwrap(), before);
        let err = db.rebuild_job(JobId(99), at(10)).unwrap_err();
        assert!(
            matches!(err, Error::NotFound { what: "job", .. }),
            "{err:?}"
        );

        let other = building_eval(&mut db, "bbb", &[job(7, "x")]);
        let x = db.jobs_of_evaluation(other).unwrap()[0].id;
        let err = db.rebuild_job(x, at(10)).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { reason, .. } if reason.contains("queued")),
            "{err:?}"
        );
        let (_, newer) = eval(&mut db, "ccc");
        assert!(db.supersede_evaluation(other, newer, at(11)).unwrap());
        let err = db.rebuild_job(x, at(12)).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { reason, .. } if reason.contains("superseded")),
            "{err:?}"
        );
        assert_eq!(states(&db, other), [JobState::Cancelled]);
    }

    #[test]
    fn cancelling_a_building_evaluation_should_cancel_unfinished_jobs_and_finish_it() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = building_eval(&mut db, "aaa", &[job(1, "a"), job(2, "b"), job(3, "c")]);
        let jobs = db.jobs_of_evaluation(id).unwrap();
        db.set_job_state(jobs[0].id, JobState::Succeeded, None, at(2))
            .unwrap();
        db.set_job_state(jobs[1].id, JobState::Building, None, at(2))
            .unwrap();
        db.upsert_build(&drv(2), None, BuildState::Running, at(2))
            .unwrap();
        let done = db.cancel_evaluation(id, at(3)).unwrap();
        assert_eq!(
            (done.evaluation, done.state, done.cancelled_jobs),
            (id, EvaluationState::Finished, 2)
        );
        assert_eq!(done.repo.to_string(), "gh/o/r");
        use JobState::{Cancelled, Succeeded};
        assert_eq!(states(&db, id), [Succeeded, Cancelled, Cancelled]);
        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!(
            (e.state, e.error.as_deref(), e.finished_at),
            (
                EvaluationState::Finished,
                Some(CANCELLED_ERROR),
                Some(at(3))
            )
        );
        // The running build is no longer needed: the builds loop will stop it.
        assert!(!db.live_drvs().unwrap().contains(&drv(2)));

        let err = db.cancel_evaluation(id, at(4)).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { reason, .. } if reason.contains("already finished")),
            "{err:?}"
        );
        let err = db.cancel_evaluation(EvaluationId(99), at(4)).unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn cancelling_an_evaluation_not_evaluated_yet_should_fail_it() {
        let mut db = StatusDb::open_memory().unwrap();
        let (_, queued) = eval(&mut db, "aaa");
        let (_, evaluating) = eval(&mut db, "bbb");
        db.set_evaluation_state(evaluating, EvaluationState::Evaluating, None, T0)
            .unwrap();
        for id in [queued, evaluating] {
            let done = db.cancel_evaluation(id, at(1)).unwrap();
            assert_eq!(
                (done.state, done.cancelled_jobs),
                (EvaluationState::Failed, 0)
            );
            let e = db.evaluation(id).unwrap().unwrap();
            assert_eq!(
                (e.state, e.error.as_deref()),
                (EvaluationState::Failed, Some(CANCELLED_ERROR))
            );
            // A late result of the running `nix eval` is discarded.
            assert!(
                !db.record_evaluation_result(id, &[job(1, "a")], at(2))
                    .unwrap()
            );
        }
    }

    #[test]
    fn rerunning_an_evaluation_should_replace_it_with_a_new_queued_one() {
        let mut db = StatusDb::open_memory().unwrap();
        let (_, older_id) = eval(&mut db, "000");
        let (id, jobs) = failed_chain(&mut db);
        assert!(db.supersede_evaluation(older_id, id, at(7)).unwrap());
        let before = db.evaluation(id).unwrap().unwrap();

        let done = db.rerun_evaluation(id, at(20)).unwrap();
        assert_eq!(done.replaces, id);
        assert_eq!(done.repo.to_string(), "gh/o/r");
        assert!(done.evaluation.0 > id.0, "{done:?}");
        assert_eq!(db.evaluation(id).unwrap(), None);
        assert_eq!(db.job(jobs[0]).unwrap(), None);
        let e = db.evaluation(done.evaluation).unwrap().unwrap();
        assert_eq!(
            (e.state, e.created_at, e.started_at, e.finished_at, e.error),
            (EvaluationState::Queued, at(20), None, None, None)
        );
        assert_eq!(
            (&e.ref_name, &e.rev, &e.flake_ref),
            (&before.ref_name, &before.rev, &before.flake_ref)
        );
        assert!(db.jobs_of_evaluation(done.evaluation).unwrap().is_empty());
        // Builds are shared per drv and stay.
        assert_eq!(
            db.build_by_drv(&drv(1)).unwrap().map(|b| b.state),
            Some(BuildState::Failed)
        );
        assert_eq!(
            db.evaluation(older_id).unwrap().unwrap().superseded_by,
            Some(done.evaluation)
        );
        // The loop's idempotent insert finds the new row.
        let repo = db
            .repo_id(&crate::testing::repo_key("gh/o/r"))
            .unwrap()
            .unwrap();
        let (found, inserted) = db
            .insert_evaluation(repo, "refs/heads/main", "aaa", "x", at(21))
            .unwrap();
        assert_eq!((found, inserted), (done.evaluation, false));
        assert_eq!(
            db.unsettled_evaluations(repo).unwrap(),
            [older_id, done.evaluation]
        );
    }

    #[test]
    fn rerun_should_refuse_an_unfinished_or_unknown_evaluation() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = building_eval(&mut db, "aaa", &[job(1, "a")]);
        let err = db.rerun_evaluation(id, at(2)).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { reason, .. } if reason.contains("still building")),
            "{err:?}"
        );
        assert_eq!(states(&db, id), [JobState::Queued]);
        let err = db.rerun_evaluation(EvaluationId(99), at(2)).unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
        // Cancelled, it can be re-run.
        db.cancel_evaluation(id, at(3)).unwrap();
        let done = db.rerun_evaluation(id, at(4)).unwrap();
        assert_ne!(done.evaluation, id);
    }
}
