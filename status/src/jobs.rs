//! Jobs: recording an evaluation's result, job state changes, and what the builds loop reads
//! to schedule them.

use std::collections::{HashMap, HashSet};

use reconix_spec::JobMeta;
use reconix_spec::names::{AttrPath, StorePath, System, Timestamp};
use rusqlite::{OptionalExtension, Params, Transaction, params};

use crate::StatusDb;
use crate::error::{Error, QueryExt, Result};
use crate::evaluations::{cancel_jobs, evaluation_state, unfinished_jobs};
use crate::row::{
    BUILD_COLUMNS, JOB_COLUMNS, features_json, get, meta_json, outputs_json, parse, parse_build,
    parse_features, parse_job, parse_meta, parse_repo_key,
};
use crate::types::{
    Constituent, EvaluationId, EvaluationState, Job, JobId, JobState, NewConstituent, NewJob,
    SchedDep, SchedJob,
};

impl StatusDb {
    /// Records the jobs an evaluation produced and moves it to `building`, all in one
    /// transaction; returns true when it did.
    ///
    /// Dependencies are given as attribute paths and resolved to the ids of jobs of the same
    /// evaluation. When no job is left to build (all `eval-failed`, or none at all), the
    /// evaluation goes straight to `finished`, because no build would ever finish it.
    ///
    /// Idempotency: the result is recorded only while the evaluation is `queued` or
    /// `evaluating`. Once recorded (or once the evaluation was superseded or failed) a second
    /// call changes nothing and returns false, so re-running an evaluation after a crash can
    /// never reset jobs that were already built. Because the insert is one transaction, a
    /// crash part-way leaves no jobs behind.
    ///
    /// Merging with what was streamed ([`record_streamed_jobs`](Self::record_streamed_jobs)):
    /// a job already recorded for the same attribute keeps its id, and keeps its state once
    /// building or ended (its build may already run or be done); a `queued` one takes the new
    /// values. Dependencies and constituents are replaced by the final, complete ones; a
    /// recorded job the result lacks is deleted; every job becomes buildable. The next state
    /// follows the jobs as stored: `finished` when every one has ended already.
    ///
    /// # Errors
    /// Returns [`Error::NotFound`] for an unknown evaluation; [`Error::Invalid`] when two jobs
    /// share an attribute, a job is neither `queued` nor `eval-failed`, a `queued` job has no
    /// drv, or a dependency names an attribute that is not a job of this evaluation (or the job
    /// itself); [`Error::Query`] when SQLite fails.
    pub fn record_evaluation_result(
        &mut self,
        id: EvaluationId,
        jobs: &[NewJob],
        now: Timestamp,
    ) -> Result<bool> {
        self.record_evaluation(id, jobs, None, now)
    }

    /// Records the jobs of an evaluation that found nothing to build (only `skipped` jobs, or
    /// none) and ends it `failed` with `message`, in one transaction, as
    /// [`record_evaluation_result`](Self::record_evaluation_result) otherwise does: an
    /// evaluation with no job must not look green.
    ///
    /// # Errors
    /// As [`record_evaluation_result`](Self::record_evaluation_result).
    pub fn record_evaluation_without_jobs(
        &mut self,
        id: EvaluationId,
        jobs: &[NewJob],
        message: &str,
        now: Timestamp,
    ) -> Result<bool> {
        self.record_evaluation(id, jobs, Some(message), now)
    }

    fn record_evaluation(
        &mut self,
        id: EvaluationId,
        jobs: &[NewJob],
        failure: Option<&str>,
        now: Timestamp,
    ) -> Result<bool> {
        const OP: &str = "record_evaluation_result";
        let invalid = |reason: String| Error::Invalid { op: OP, reason };
        let index = index_new_jobs(jobs, OP)?;
        let mut dep_edges = Vec::new();
        // (aggregate, position, constituent job or derivation)
        let mut constituents: Vec<(usize, usize, Result<usize, &StorePath>)> = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            for (position, c) in job.constituents.iter().flatten().enumerate() {
                let c = match c {
                    NewConstituent::Job(attr) if job.deps.contains(attr) => match index.get(attr) {
                        Some(&d) => Ok(d),
                        None => {
                            return Err(invalid(format!(
                                "aggregate `{}` has constituent `{attr}`, which is not a job of \
                                 this evaluation",
                                job.attr
                            )));
                        }
                    },
                    NewConstituent::Job(attr) => {
                        return Err(invalid(format!(
                            "aggregate `{}` has constituent `{attr}`, which is not among its deps",
                            job.attr
                        )));
                    }
                    NewConstituent::Derivation(drv) => Err(drv),
                };
                constituents.push((i, position, c));
            }
            for dep in &job.deps {
                let Some(&d) = index.get(dep) else {
                    return Err(invalid(format!(
                        "job `{}` depends on `{dep}`, which is not a job of this evaluation",
                        job.attr
                    )));
                };
                if d == i {
                    return Err(invalid(format!("job `{}` depends on itself", job.attr)));
                }
                dep_edges.push((i, d));
            }
        }

        let tx = self.write(OP)?;
        let state = evaluation_state(&tx, id, OP)?;
        if !state.is_evaluating() {
            return Ok(false);
        }
        // Jobs streamed while the evaluation ran (or left by an earlier run of it) keep their
        // ids and, once building or ended, their states; their edges are replaced below by
        // the final, complete ones.
        let existing = jobs_by_attr(&tx, id, OP)?;
        let this_evaluation = "SELECT id FROM jobs WHERE evaluation_id = ?1";
        tx.execute(
            &format!("DELETE FROM job_deps WHERE job_id IN ({this_evaluation})"),
            [id.0],
        )
        .op(OP)?;
        tx.execute(
            &format!("DELETE FROM job_constituents WHERE job_id IN ({this_evaluation})"),
            [id.0],
        )
        .op(OP)?;
        {
            // A streamed job the final result lacks (Nix should never do that) is dropped.
            let mut delete = tx.prepare_cached("DELETE FROM jobs WHERE id = ?1").op(OP)?;
            let kept: HashSet<&str> = index.keys().map(|a| a.as_str()).collect();
            for (attr, (job, _)) in &existing {
                if !kept.contains(attr.as_str()) {
                    delete.execute([job]).op(OP)?;
                }
            }
        }
        let mut ids = Vec::with_capacity(jobs.len());
        {
            for job in jobs {
                let old = existing.get(job.attr.as_str()).copied();
                ids.push(write_job(&tx, id, job, true, old, now, OP)?);
            }
            let mut insert_dep = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO job_deps (job_id, dep_job_id) VALUES (?1, ?2)",
                )
                .op(OP)?;
            for (job, dep) in dep_edges {
                insert_dep.execute([ids[job], ids[dep]]).op(OP)?;
            }
            let mut insert_constituent = tx
                .prepare_cached(
                    "INSERT INTO job_constituents (job_id, position, constituent_job_id, \
                     drv_path) VALUES (?1, ?2, ?3, ?4)",
                )
                .op(OP)?;
            for (job, position, c) in constituents {
                let (constituent, drv) = match c {
                    Ok(d) => (Some(ids[d]), None),
                    Err(drv) => (None, Some(drv.as_str())),
                };
                insert_constituent
                    .execute(params![
                        ids[job],
                        i64::try_from(position).unwrap_or(i64::MAX),
                        constituent,
                        drv
                    ])
                    .op(OP)?;
            }
        }
        // The states as stored: a streamed job may already have been built.
        let next = if failure.is_some() {
            cancel_jobs(&tx, id, now, OP)?;
            EvaluationState::Failed
        } else if unfinished_jobs(&tx, id, OP)? > 0 {
            EvaluationState::Building
        } else {
            EvaluationState::Finished
        };
        tx.execute(
            "UPDATE evaluations SET state = ?2, started_at = coalesce(started_at, ?3), \
             finished_at = ?4, error = coalesce(?5, error), evaluated = ?6 WHERE id = ?1",
            params![
                id.0,
                next.as_str(),
                now.0,
                next.is_terminal().then_some(now.0),
                failure,
                i64::try_from(jobs.len()).unwrap_or(i64::MAX)
            ],
        )
        .op(OP)?;
        tx.commit().op(OP)?;
        Ok(true)
    }

    /// Returns job `id`, with its dependencies, if it exists.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails and [`Error::Corrupt`] for a malformed row.
    pub fn job(&self, id: JobId) -> Result<Option<Job>> {
        Ok(self.select_jobs("job", "j.id = ?1", [id.0])?.pop())
    }

    /// Returns the jobs of evaluation `id` with their dependencies, in id order.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails and [`Error::Corrupt`] for a malformed row.
    pub fn jobs_of_evaluation(&self, id: EvaluationId) -> Result<Vec<Job>> {
        self.select_jobs("jobs_of_evaluation", "j.evaluation_id = ?1", [id.0])
    }

    /// Selects jobs (alias `j`, joined with their evaluation `e`) matching `filter`, with
    /// their dependencies, in id order, inside one read transaction.
    pub(crate) fn select_jobs<P: Params + Copy>(
        &self,
        op: &'static str,
        filter: &str,
        params: P,
    ) -> Result<Vec<Job>> {
        let _snapshot = self.read(op)?;
        self.query_jobs(op, filter, params)
    }

    /// Returns the meta of the jobs (alias `j`) matching `filter`, by id.
    pub(crate) fn query_job_metas<P: Params + Copy>(
        &self,
        op: &'static str,
        filter: &str,
        params: P,
    ) -> Result<HashMap<JobId, JobMeta>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT j.id, j.meta FROM jobs j WHERE ({filter}) AND j.meta != '{{}}'"
            ))
            .op(op)?;
        let mut rows = stmt.query(params).op(op)?;
        let mut metas = HashMap::new();
        while let Some(row) = rows.next().op(op)? {
            metas.insert(JobId(get(row, 0, op)?), parse_meta(get(row, 1, op)?)?);
        }
        Ok(metas)
    }

    /// Does the work of [`select_jobs`](Self::select_jobs) without opening a transaction, for
    /// callers that already hold one.
    pub(crate) fn query_jobs<P: Params + Copy>(
        &self,
        op: &'static str,
        filter: &str,
        params: P,
    ) -> Result<Vec<Job>> {
        let tx = &self.conn;
        let mut deps: HashMap<i64, Vec<JobId>> = HashMap::new();
        {
            let sql = format!(
                "SELECT jd.job_id, jd.dep_job_id FROM jobs j \
                 JOIN evaluations e ON e.id = j.evaluation_id \
                 JOIN job_deps jd ON jd.job_id = j.id \
                 WHERE {filter} ORDER BY jd.job_id, jd.dep_job_id"
            );
            let mut stmt = tx.prepare_cached(&sql).op(op)?;
            let mut rows = stmt.query(params).op(op)?;
            while let Some(row) = rows.next().op(op)? {
                deps.entry(get(row, 0, op)?)
                    .or_default()
                    .push(JobId(get(row, 1, op)?));
            }
        }
        let mut constituents: HashMap<i64, Vec<Constituent>> = HashMap::new();
        {
            let sql = format!(
                "SELECT c.job_id, d.id, d.attr, d.state, c.drv_path FROM jobs j \
                 JOIN evaluations e ON e.id = j.evaluation_id \
                 JOIN job_constituents c ON c.job_id = j.id \
                 LEFT JOIN jobs d ON d.id = c.constituent_job_id \
                 WHERE {filter} ORDER BY c.job_id, c.position"
            );
            let mut stmt = tx.prepare_cached(&sql).op(op)?;
            let mut rows = stmt.query(params).op(op)?;
            while let Some(row) = rows.next().op(op)? {
                let constituent = match get::<Option<i64>>(row, 1, op)? {
                    Some(id) => Constituent::Job {
                        id: JobId(id),
                        attr: parse("jobs", "attr", get(row, 2, op)?)?,
                        state: parse("jobs", "state", get(row, 3, op)?)?,
                    },
                    None => Constituent::Derivation {
                        drv_path: parse("job_constituents", "drv_path", get(row, 4, op)?)?,
                    },
                };
                constituents
                    .entry(get(row, 0, op)?)
                    .or_default()
                    .push(constituent);
            }
        }
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs j JOIN evaluations e ON e.id = j.evaluation_id \
             WHERE {filter} ORDER BY j.id"
        );
        let mut stmt = tx.prepare_cached(&sql).op(op)?;
        let mut rows = stmt.query(params).op(op)?;
        let mut jobs = Vec::new();
        while let Some(row) = rows.next().op(op)? {
            let mut job = parse_job(row, op)?;
            job.deps = deps.remove(&job.id.0).unwrap_or_default();
            if let Some(list) = &mut job.constituents {
                *list = constituents.remove(&job.id.0).unwrap_or_default();
            }
            jobs.push(job);
        }
        Ok(jobs)
    }

    /// Moves job `id` to `state` with `error`; returns true when its state changed.
    ///
    /// Entering `building` sets `started_at`; entering a terminal state sets `finished_at`.
    /// Setting the current state again, or any state once terminal, changes nothing and
    /// returns false: a job cancelled by a supersede stays cancelled even if its build then
    /// succeeds.
    ///
    /// # Errors
    /// Returns [`Error::NotFound`] for an unknown job and [`Error::Query`] when SQLite fails.
    pub fn set_job_state(
        &mut self,
        id: JobId,
        state: JobState,
        error: Option<&str>,
        now: Timestamp,
    ) -> Result<bool> {
        Ok(self.set_job_states(&[(id, state, error)], now)? == 1)
    }

    /// Moves each job to its state with its error, as [`set_job_state`](Self::set_job_state)
    /// does, all in one transaction; returns how many changed.
    ///
    /// # Errors
    /// As [`set_job_state`](Self::set_job_state); on an error nothing changes.
    pub fn set_job_states(
        &mut self,
        changes: &[(JobId, JobState, Option<&str>)],
        now: Timestamp,
    ) -> Result<usize> {
        const OP: &str = "set_job_state";
        let tx = self.write(OP)?;
        let mut changed = 0;
        for &(id, state, error) in changes {
            changed += usize::from(set_one_job_state(&tx, id, state, error, now)?);
        }
        tx.commit().op(OP)?;
        Ok(changed)
    }
}

/// The change of [`StatusDb::set_job_state`] inside `tx`; returns true when the state changed.
fn set_one_job_state(
    tx: &rusqlite::Transaction<'_>,
    id: JobId,
    state: JobState,
    error: Option<&str>,
    now: Timestamp,
) -> Result<bool> {
    const OP: &str = "set_job_state";
    let current: String = tx
        .prepare_cached("SELECT state FROM jobs WHERE id = ?1")
        .and_then(|mut stmt| stmt.query_row([id.0], |r| r.get(0)).optional())
        .op(OP)?
        .ok_or_else(|| Error::NotFound {
            what: "job",
            key: id.to_string(),
        })?;
    let current: JobState = parse("jobs", "state", current)?;
    if current == state || current.is_terminal() {
        return Ok(false);
    }
    let started_at = (state == JobState::Building).then_some(now.0);
    let finished_at = state.is_terminal().then_some(now.0);
    tx.prepare_cached(
        "UPDATE jobs SET state = ?2, error = ?3, started_at = coalesce(?4, started_at), \
             finished_at = coalesce(?5, finished_at) WHERE id = ?1",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            id.0,
            state.as_str(),
            error,
            started_at,
            finished_at
        ])
    })
    .op(OP)?;
    Ok(true)
}

impl StatusDb {
    /// Returns every `queued` or `building` job of the evaluations in state `building`, and
    /// the buildable ones of evaluations still `evaluating` or that timed out, with
    /// its dependencies' states and the build of its drv, ordered by evaluation then job id
    /// (oldest first).
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails and [`Error::Corrupt`] for a malformed row.
    pub fn schedulable_jobs(&self) -> Result<Vec<SchedJob>> {
        const OP: &str = "schedulable_jobs";
        // While an evaluation runs only the jobs recorded buildable may be built; after it
        // timed out (`failed` with unfinished jobs left: every other way to fail cancels
        // them) its buildable jobs still may.
        let live = format!(
            "(e.state = 'building' OR (e.state IN ('evaluating', 'failed') AND j.buildable)) \
             AND j.state IN {}",
            JobState::unfinished_sql()
        );
        let tx = self.read(OP)?;
        let mut deps: HashMap<i64, Vec<SchedDep>> = HashMap::new();
        {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT jd.job_id, jd.dep_job_id, d.state, d.attr, \
                     coalesce(db.state = 'succeeded', 0) AND NOT j.aggregate FROM jobs j \
                     JOIN evaluations e ON e.id = j.evaluation_id \
                     JOIN job_deps jd ON jd.job_id = j.id \
                     JOIN jobs d ON d.id = jd.dep_job_id \
                     LEFT JOIN builds db ON db.drv_path = d.drv_path \
                     WHERE {live} ORDER BY jd.job_id, jd.dep_job_id"
                ))
                .op(OP)?;
            let mut rows = stmt.query([]).op(OP)?;
            while let Some(row) = rows.next().op(OP)? {
                deps.entry(get(row, 0, OP)?).or_default().push(SchedDep {
                    id: JobId(get(row, 1, OP)?),
                    state: parse("jobs", "state", get(row, 2, OP)?)?,
                    attr: parse("jobs", "attr", get(row, 3, OP)?)?,
                    has_output: get(row, 4, OP)?,
                });
            }
        }
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT j.id, j.evaluation_id, j.attr, j.drv_path, j.system, j.state, \
                 r.forge, r.name, j.required_features, j.meta, {BUILD_COLUMNS} FROM jobs j \
                 JOIN evaluations e ON e.id = j.evaluation_id \
                 JOIN repos r ON r.id = e.repo_id \
                 LEFT JOIN builds b ON b.drv_path = j.drv_path \
                 WHERE {live} ORDER BY j.evaluation_id, j.id"
            ))
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        let mut jobs = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            let id: i64 = get(row, 0, OP)?;
            let drv: Option<String> = get(row, 3, OP)?;
            let drv_path = parse(
                "jobs",
                "drv_path",
                drv.ok_or_else(|| Error::Corrupt {
                    table: "jobs",
                    column: "drv_path",
                    value: "NULL".to_owned(),
                    reason: format!("job {id} is unfinished but has no drv"),
                })?,
            )?;
            jobs.push(SchedJob {
                id: JobId(id),
                evaluation_id: EvaluationId(get(row, 1, OP)?),
                repo: parse_repo_key(get(row, 6, OP)?, get(row, 7, OP)?)?,
                attr: parse("jobs", "attr", get(row, 2, OP)?)?,
                drv_path,
                system: parse("jobs", "system", get(row, 4, OP)?)?,
                state: parse("jobs", "state", get(row, 5, OP)?)?,
                required_features: parse_features(get(row, 8, OP)?)?,
                deps: deps.remove(&id).unwrap_or_default(),
                meta: parse_meta(get(row, 9, OP)?)?,
                build: parse_build(row, 10, OP)?,
            });
        }
        Ok(jobs)
    }

    /// Returns the drvs still needed by a `queued` or `building` job of an unfinished
    /// evaluation; a running build whose drv is not in this set may be cancelled.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails and [`Error::Corrupt`] for a malformed path.
    pub fn live_drvs(&self) -> Result<HashSet<StorePath>> {
        const OP: &str = "live_drvs";
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT DISTINCT j.drv_path FROM jobs j \
                 JOIN evaluations e ON e.id = j.evaluation_id \
                 WHERE e.state IN {} AND j.state IN {} AND j.drv_path IS NOT NULL",
                EvaluationState::unfinished_sql(),
                JobState::unfinished_sql()
            ))
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        let mut drvs = HashSet::new();
        while let Some(row) = rows.next().op(OP)? {
            drvs.insert(parse("jobs", "drv_path", get(row, 0, OP)?)?);
        }
        Ok(drvs)
    }

    /// Returns the output paths the jobs of `drv` recorded, sorted, without duplicates.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails and [`Error::Corrupt`] for a malformed path.
    pub fn outputs_of_drv(&self, drv: &StorePath) -> Result<Vec<StorePath>> {
        const OP: &str = "outputs_of_drv";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT o.value FROM jobs j, json_each(j.outputs) o \
                 WHERE j.drv_path = ?1 ORDER BY o.value",
            )
            .op(OP)?;
        let mut rows = stmt.query([drv.as_str()]).op(OP)?;
        let mut paths = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            paths.push(parse("jobs", "outputs", get(row, 0, OP)?)?);
        }
        Ok(paths)
    }
}

/// Returns the position of each of `jobs` by attribute, after checking that no two share one
/// and that each is `queued` or `skipped` with a drv, or `eval-failed`.
pub(crate) fn index_new_jobs<'a>(
    jobs: impl IntoIterator<Item = &'a NewJob>,
    op: &'static str,
) -> Result<HashMap<&'a AttrPath, usize>> {
    let invalid = |reason: String| Error::Invalid { op, reason };
    let mut index: HashMap<&AttrPath, usize> = HashMap::new();
    for (i, job) in jobs.into_iter().enumerate() {
        if index.insert(&job.attr, i).is_some() {
            return Err(invalid(format!("duplicate job attribute `{}`", job.attr)));
        }
        match (job.state, &job.drv_path) {
            (JobState::Queued | JobState::Skipped, Some(_)) | (JobState::EvalFailed, _) => {}
            (JobState::Queued | JobState::Skipped, None) => {
                return Err(invalid(format!("queued job `{}` has no drv", job.attr)));
            }
            (state, _) => {
                return Err(invalid(format!(
                    "job `{}` is {state}; new jobs are queued, skipped or eval-failed",
                    job.attr
                )));
            }
        }
    }
    Ok(index)
}

/// Returns the jobs of evaluation `id` by attribute: their ids and states.
fn jobs_by_attr(
    tx: &Transaction<'_>,
    id: EvaluationId,
    op: &'static str,
) -> Result<HashMap<String, (i64, JobState)>> {
    let mut stmt = tx
        .prepare_cached("SELECT attr, id, state FROM jobs WHERE evaluation_id = ?1")
        .op(op)?;
    let mut rows = stmt.query([id.0]).op(op)?;
    let mut jobs = HashMap::new();
    while let Some(row) = rows.next().op(op)? {
        let state: JobState = parse("jobs", "state", get(row, 2, op)?)?;
        jobs.insert(get(row, 0, op)?, (get(row, 1, op)?, state));
    }
    Ok(jobs)
}

/// Returns the id and state of the job of evaluation `id` at `attr`, if there is one.
pub(crate) fn job_by_attr(
    tx: &Transaction<'_>,
    id: EvaluationId,
    attr: &AttrPath,
    op: &'static str,
) -> Result<Option<(i64, JobState)>> {
    let found: Option<(i64, String)> = tx
        .prepare_cached("SELECT id, state FROM jobs WHERE evaluation_id = ?1 AND attr = ?2")
        .and_then(|mut stmt| {
            stmt.query_row(params![id.0, attr.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .op(op)?;
    found
        .map(|(job, state)| Ok((job, parse("jobs", "state", state)?)))
        .transpose()
}

/// Writes `job` of evaluation `id` and returns its row id: a new row, or the `existing` one
/// (id and state) of the same attribute. An existing job still `queued` takes the new values;
/// one that is building or has ended keeps its row (so a build already running or done for a
/// streamed job is never reset), and only its `buildable` flag is updated.
pub(crate) fn write_job(
    tx: &Transaction<'_>,
    id: EvaluationId,
    job: &NewJob,
    buildable: bool,
    existing: Option<(i64, JobState)>,
    now: Timestamp,
    op: &'static str,
) -> Result<i64> {
    let finished_at = job.state.is_terminal().then_some(now.0);
    let outputs = outputs_json(op, &job.outputs)?;
    match existing {
        Some((row, JobState::Queued)) => {
            tx.prepare_cached(
                "UPDATE jobs SET name = ?2, system = ?3, drv_path = ?4, outputs = ?5, \
                 state = ?6, error = ?7, finished_at = ?8, required_features = ?9, \
                 aggregate = ?10, meta = ?11, buildable = ?12 WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    row,
                    job.name,
                    job.system.as_ref().map(System::as_str),
                    job.drv_path.as_ref().map(StorePath::as_str),
                    outputs,
                    job.state.as_str(),
                    job.error,
                    finished_at,
                    features_json(&job.required_features),
                    job.constituents.is_some(),
                    meta_json(&job.meta),
                    buildable,
                ])
            })
            .op(op)?;
            Ok(row)
        }
        Some((row, _)) => {
            tx.prepare_cached("UPDATE jobs SET buildable = ?2 WHERE id = ?1")
                .and_then(|mut stmt| stmt.execute(params![row, buildable]))
                .op(op)?;
            Ok(row)
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO jobs (evaluation_id, attr, name, system, drv_path, outputs, \
                 state, error, created_at, finished_at, required_features, aggregate, meta, \
                 buildable) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    id.0,
                    job.attr.as_str(),
                    job.name,
                    job.system.as_ref().map(System::as_str),
                    job.drv_path.as_ref().map(StorePath::as_str),
                    outputs,
                    job.state.as_str(),
                    job.error,
                    now.0,
                    finished_at,
                    features_json(&job.required_features),
                    job.constituents.is_some(),
                    meta_json(&job.meta),
                    buildable,
                ])
            })
            .op(op)?;
            Ok(tx.last_insert_rowid())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use crate::testing::{T0, at, attr, building_eval, drv, eval, failed_job, job, with_deps};
    use crate::{
        BuildState, Constituent, Error, EvaluationState, JobId, JobState, NewConstituent, SchedDep,
        StatusDb,
    };

    #[test]
    fn an_aggregate_should_keep_its_constituents_in_order_with_their_states() {
        let mut db = StatusDb::open_memory().unwrap();
        let mut agg = with_deps(job(3, "agg"), &["b", "a"]);
        agg.constituents = Some(vec![
            NewConstituent::Job(attr("packages.x86_64-linux.b")),
            NewConstituent::Derivation(drv(9)),
            NewConstituent::Job(attr("packages.x86_64-linux.a")),
        ]);
        let mut empty = job(4, "empty");
        empty.constituents = Some(Vec::new());
        let id = building_eval(
            &mut db,
            "aaa",
            &[job(1, "a"), failed_job("b", "boom"), agg, empty],
        );
        let stored = db.jobs_of_evaluation(id).unwrap();
        let (a, b) = (&stored[0], &stored[1]);
        db.set_job_state(a.id, JobState::Succeeded, None, at(2))
            .unwrap();
        let agg = db.job(stored[2].id).unwrap().unwrap();
        assert_eq!(
            agg.constituents,
            Some(vec![
                Constituent::Job {
                    id: b.id,
                    attr: b.attr.clone(),
                    state: JobState::EvalFailed
                },
                Constituent::Derivation { drv_path: drv(9) },
                Constituent::Job {
                    id: a.id,
                    attr: a.attr.clone(),
                    state: JobState::Succeeded
                },
            ])
        );
        assert_eq!(agg.deps, [a.id, b.id]);
        assert_eq!(
            stored[3].constituents,
            Some(Vec::new()),
            "an empty aggregate"
        );
        assert_eq!(stored[0].constituents, None, "not an aggregate");
        // The API's view carries them too.
        let view = db.job_view(agg.id).unwrap().unwrap();
        assert_eq!(view.job.constituents, agg.constituents);
    }

    #[test]
    fn a_constituent_job_outside_the_aggregates_deps_should_be_refused() {
        let mut db = StatusDb::open_memory().unwrap();
        let (_, id) = eval(&mut db, "aaa");
        let mut agg = job(2, "agg");
        agg.constituents = Some(vec![NewConstituent::Job(attr("packages.x86_64-linux.a"))]);
        let err = db
            .record_evaluation_result(id, &[job(1, "a"), agg], at(1))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { reason, .. } if reason.contains("not among its deps")),
            "{err}"
        );
    }

    #[test]
    fn recording_a_result_should_insert_jobs_with_resolved_deps_and_start_building() {
        let mut db = StatusDb::open_memory().unwrap();
        let (_, id) = eval(&mut db, "aaa");
        db.set_evaluation_state(id, EvaluationState::Evaluating, None, at(1))
            .unwrap();
        let jobs = [
            with_deps(job(1, "app"), &["lib", "tool"]),
            job(2, "lib"),
            with_deps(job(3, "tool"), &["lib"]),
            failed_job("broken", "attribute missing"),
        ];
        assert!(db.record_evaluation_result(id, &jobs, at(2)).unwrap());

        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!(
            (e.state, e.started_at),
            (EvaluationState::Building, Some(at(1)))
        );
        let stored = db.jobs_of_evaluation(id).unwrap();
        assert_eq!(stored.len(), 4);
        let (app, lib, tool, broken) = (&stored[0], &stored[1], &stored[2], &stored[3]);
        assert_eq!(app.attr, attr("packages.x86_64-linux.app"));
        assert_eq!(app.drv_path, Some(drv(1)));
        assert_eq!(app.outputs, jobs[0].outputs);
        assert_eq!(app.deps, [lib.id, tool.id]);
        assert_eq!(tool.deps, [lib.id]);
        assert!(lib.deps.is_empty());
        assert_eq!(
            (app.state, app.created_at, app.finished_at),
            (JobState::Queued, at(2), None)
        );
        assert_eq!(broken.state, JobState::EvalFailed);
        assert_eq!(broken.drv_path, None);
        assert_eq!(broken.error.as_deref(), Some("attribute missing"));
        assert_eq!(broken.finished_at, Some(at(2)));
        assert_eq!(db.job(tool.id).unwrap().as_ref(), Some(tool));
        assert_eq!(db.job(JobId(999)).unwrap(), None);
    }

    #[test]
    fn an_evaluation_without_jobs_to_build_should_fail_with_its_message_and_keep_skipped_jobs() {
        let mut db = StatusDb::open_memory().unwrap();
        let (_, id) = eval(&mut db, "aaa");
        db.set_evaluation_state(id, EvaluationState::Evaluating, None, at(1))
            .unwrap();
        let mut skipped = job(1, "arm");
        skipped.state = JobState::Skipped;
        skipped.error = Some("skipped: its system aarch64-linux is not built".to_owned());
        assert!(
            db.record_evaluation_without_jobs(id, &[skipped], "no jobs under packages", at(2))
                .unwrap()
        );
        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!(
            (e.state, e.error.as_deref(), e.finished_at),
            (
                EvaluationState::Failed,
                Some("no jobs under packages"),
                Some(at(2))
            )
        );
        let stored = db.jobs_of_evaluation(id).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(
            (stored[0].state, stored[0].finished_at),
            (JobState::Skipped, Some(at(2)))
        );
        assert!(stored[0].drv_path.is_some());
    }

    #[test]
    fn recording_a_result_twice_should_change_nothing_the_second_time() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = building_eval(&mut db, "aaa", &[job(1, "a"), job(2, "b")]);
        let first = db.jobs_of_evaluation(id).unwrap();
        db.set_job_state(first[0].id, JobState::Succeeded, None, at(3))
            .unwrap();
        assert!(
            !db.record_evaluation_result(id, &[job(1, "a"), job(7, "c")], at(4))
                .unwrap()
        );
        let again = db.jobs_of_evaluation(id).unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(again[0].state, JobState::Succeeded);
        assert_eq!(again[1].id, first[1].id);
    }

    #[test]
    fn a_result_for_a_superseded_evaluation_should_be_discarded() {
        let mut db = StatusDb::open_memory().unwrap();
        let (_, old) = eval(&mut db, "aaa");
        let (_, new) = eval(&mut db, "bbb");
        db.supersede_evaluation(old, new, at(1)).unwrap();
        assert!(
            !db.record_evaluation_result(old, &[job(1, "a")], at(2))
                .unwrap()
        );
        assert!(db.jobs_of_evaluation(old).unwrap().is_empty());
    }

    #[test]
    fn a_result_with_nothing_to_build_should_finish_the_evaluation_at_once() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = building_eval(&mut db, "aaa", &[failed_job("x", "boom")]);
        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!(
            (e.state, e.finished_at),
            (EvaluationState::Finished, Some(at(1)))
        );
    }

    #[test]
    fn invalid_results_should_be_rejected_without_writing_anything() {
        let mut db = StatusDb::open_memory().unwrap();
        let (_, id) = eval(&mut db, "aaa");
        let mut no_drv = job(1, "a");
        no_drv.drv_path = None;
        let mut built = job(2, "b");
        built.state = JobState::Succeeded;
        let cases = [
            vec![job(1, "a"), job(2, "a")],
            vec![no_drv],
            vec![built],
            vec![with_deps(job(1, "a"), &["missing"])],
            vec![with_deps(job(1, "a"), &["a"])],
        ];
        for jobs in cases {
            let err = db.record_evaluation_result(id, &jobs, at(1)).unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{jobs:?}: {err:?}");
        }
        assert!(db.jobs_of_evaluation(id).unwrap().is_empty());
        assert_eq!(
            db.evaluation(id).unwrap().unwrap().state,
            EvaluationState::Queued
        );
        let err = db
            .record_evaluation_result(crate::EvaluationId(42), &[], T0)
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn ten_thousand_jobs_should_be_recorded_in_one_call() {
        let mut db = StatusDb::open_memory().unwrap();
        let (_, id) = eval(&mut db, "aaa");
        let jobs: Vec<_> = (0..10_000u64)
            .map(|n| {
                let j = job(n, &format!("p{n}"));
                // A chain of dependencies plus a fan-in on the first job.
                match n {
                    0 => j,
                    1 => with_deps(j, &["p0"]),
                    _ => with_deps(j, &[&format!("p{}", n - 1), "p0"]),
                }
            })
            .collect();
        assert!(db.record_evaluation_result(id, &jobs, at(1)).unwrap());
        let stored = db.jobs_of_evaluation(id).unwrap();
        assert_eq!(stored.len(), 10_000);
        let deps: usize = stored.iter().map(|j| j.deps.len()).sum();
        assert_eq!(deps, 1 + 2 * 9_998);
        assert_eq!(stored[9_999].deps, [stored[0].id, stored[9_998].id]);
        assert_eq!(stored[9_999].drv_path, Some(drv(9_999)));
        let sched = db.schedulable_jobs().unwrap();
        assert_eq!(sched.len(), 10_000);
        assert_eq!(db.live_drvs().unwrap().len(), 10_000);
    }

    #[test]
    fn schedulable_jobs_should_carry_the_required_features() {
        let mut db = StatusDb::open_memory().unwrap();
        let mut kvm = job(1, "vm-test");
        kvm.required_features = vec!["big-parallel".to_owned(), "kvm".to_owned()];
        building_eval(&mut db, "aaa", &[kvm, job(2, "plain")]);
        let sched = db.schedulable_jobs().unwrap();
        assert_eq!(sched[0].required_features, ["big-parallel", "kvm"]);
        assert!(sched[1].required_features.is_empty());
    }

    #[test]
    fn set_job_state_should_stamp_times_and_keep_terminal_states() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = building_eval(&mut db, "aaa", &[job(1, "a")]);
        let j = db.jobs_of_evaluation(id).unwrap()[0].id;
        assert!(
            db.set_job_state(j, JobState::Building, None, at(2))
                .unwrap()
        );
        assert!(
            !db.set_job_state(j, JobState::Building, None, at(3))
                .unwrap()
        );
        assert!(
            db.set_job_state(j, JobState::Failed, Some("exit 1"), at(4))
                .unwrap()
        );
        assert!(
            !db.set_job_state(j, JobState::Succeeded, None, at(5))
                .unwrap()
        );
        let job = db.job(j).unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.error.as_deref(), Some("exit 1"));
        assert_eq!(
            (job.started_at, job.finished_at),
            (Some(at(2)), Some(at(4)))
        );
        let err = db
            .set_job_state(JobId(99), JobState::Building, None, T0)
            .unwrap_err();
        assert!(
            matches!(err, Error::NotFound { what: "job", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn job_states_should_change_together_or_not_at_all() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = building_eval(&mut db, "aaa", &[job(1, "a"), job(2, "b"), job(3, "c")]);
        let ids: Vec<JobId> = db
            .jobs_of_evaluation(id)
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        let failed = Some("dependency a failed");
        // One unknown job: nothing changes.
        let err = db
            .set_job_states(
                &[
                    (ids[1], JobState::DependencyFailed, failed),
                    (JobId(99), JobState::Failed, None),
                ],
                at(2),
            )
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
        assert_eq!(db.job(ids[1]).unwrap().unwrap().state, JobState::Queued);
        // Otherwise all at once; a state set again does not count.
        let changed = db
            .set_job_states(
                &[
                    (ids[0], JobState::Building, None),
                    (ids[1], JobState::DependencyFailed, failed),
                    (ids[2], JobState::DependencyFailed, failed),
                    (ids[0], JobState::Building, None),
                ],
                at(3),
            )
            .unwrap();
        assert_eq!(changed, 3);
        let b = db.job(ids[1]).unwrap().unwrap();
        assert_eq!(b.state, JobState::DependencyFailed);
        assert_eq!(b.error.as_deref(), failed);
        assert_eq!(b.finished_at, Some(at(3)));
    }

    #[test]
    fn a_job_row_with_a_bad_store_path_should_be_reported_as_corrupt() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = building_eval(&mut db, "aaa", &[job(1, "a")]);
        db.conn
            .execute("UPDATE jobs SET drv_path = '/tmp/evil.drv'", [])
            .unwrap();
        for err in [
            db.jobs_of_evaluation(id).unwrap_err(),
            db.schedulable_jobs().unwrap_err(),
            db.live_drvs().unwrap_err(),
        ] {
            assert!(
                matches!(
                    err,
                    Error::Corrupt {
                        table: "jobs",
                        column: "drv_path",
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        db.conn
            .execute(
                "UPDATE jobs SET drv_path = ?1, outputs = '{\"out\": 3}'",
                [drv(1).as_str()],
            )
            .unwrap();
        let err = db.jobs_of_evaluation(id).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Corrupt {
                    table: "jobs",
                    column: "outputs",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn schedulable_jobs_should_list_unfinished_jobs_of_building_evaluations_only() {
        let mut db = StatusDb::open_memory().unwrap();
        let live = building_eval(
            &mut db,
            "aaa",
            &[
                job(1, "lib"),
                with_deps(job(2, "app"), &["lib"]),
                job(3, "done"),
            ],
        );
        let jobs = db.jobs_of_evaluation(live).unwrap();
        db.set_job_state(jobs[2].id, JobState::Succeeded, None, at(2))
            .unwrap();
        db.set_job_state(jobs[0].id, JobState::Building, None, at(2))
            .unwrap();
        db.upsert_build(&drv(1), None, BuildState::Running, at(2))
            .unwrap();
        // A superseded evaluation's jobs are cancelled and must not be scheduled.
        let (_, queued_eval) = eval(&mut db, "ccc");
        let old = building_eval(&mut db, "bbb", &[job(4, "x")]);
        db.supersede_evaluation(old, queued_eval, at(3)).unwrap();

        let sched = db.schedulable_jobs().unwrap();
        assert_eq!(sched.len(), 2);
        let (lib, app) = (&sched[0], &sched[1]);
        assert_eq!(
            (lib.id, lib.state, lib.evaluation_id),
            (jobs[0].id, JobState::Building, live)
        );
        assert_eq!(
            lib.build.as_ref().map(|b| b.state),
            Some(BuildState::Running)
        );
        assert_eq!(lib.drv_path, drv(1));
        assert!(lib.deps.is_empty());
        assert_eq!(app.attr, jobs[1].attr);
        assert_eq!(app.build, None);
        assert_eq!(
            app.deps,
            [SchedDep {
                attr: jobs[0].attr.clone(),
                id: jobs[0].id,
                state: JobState::Building,
                has_output: false,
            }]
        );
    }

    #[test]
    fn live_drvs_should_contain_only_drvs_of_unfinished_jobs_of_live_evaluations() {
        let mut db = StatusDb::open_memory().unwrap();
        let live = building_eval(
            &mut db,
            "aaa",
            &[job(1, "a"), job(2, "b"), job(3, "shared")],
        );
        let jobs = db.jobs_of_evaluation(live).unwrap();
        db.set_job_state(jobs[1].id, JobState::Succeeded, None, at(2))
            .unwrap();
        let (_, newer) = eval(&mut db, "ccc");
        let old = building_eval(&mut db, "bbb", &[job(3, "shared"), job(4, "gone")]);
        db.supersede_evaluation(old, newer, at(3)).unwrap();
        assert_eq!(db.live_drvs().unwrap(), HashSet::from([drv(1), drv(3)]));
    }

    #[test]
    fn a_dependency_whose_build_failed_with_output_should_have_output_and_not_block() {
        let mut db = StatusDb::open_memory().unwrap();
        let e = building_eval(
            &mut db,
            "aaa",
            &[job(1, "lib"), with_deps(job(2, "app"), &["lib"])],
        );
        let jobs = db.jobs_of_evaluation(e).unwrap();
        let outputs = crate::BuiltOutputs {
            failed: true,
            ..crate::BuiltOutputs::default()
        };
        db.finish_built(&drv(1), Some(0), &outputs, at(2)).unwrap();
        db.set_job_state(jobs[0].id, JobState::Failed, Some("x"), at(2))
            .unwrap();
        let sched = db.schedulable_jobs().unwrap();
        assert_eq!(sched.len(), 1);
        let dep = &sched[0].deps[0];
        assert_eq!((dep.state, dep.has_output), (JobState::Failed, true));
        assert!(!dep.blocks() && dep.is_ready());
    }

    #[test]
    fn an_aggregate_should_be_blocked_by_a_constituent_that_failed_with_output() {
        let mut db = StatusDb::open_memory().unwrap();
        let aggregate = crate::NewJob {
            constituents: Some(vec![NewConstituent::Job(attr("packages.x86_64-linux.lib"))]),
            ..with_deps(job(2, "all"), &["lib"])
        };
        let e = building_eval(&mut db, "aaa", &[job(1, "lib"), aggregate]);
        let jobs = db.jobs_of_evaluation(e).unwrap();
        let outputs = crate::BuiltOutputs {
            failed: true,
            ..crate::BuiltOutputs::default()
        };
        db.finish_built(&drv(1), Some(0), &outputs, at(2)).unwrap();
        db.set_job_state(jobs[0].id, JobState::Failed, Some("x"), at(2))
            .unwrap();
        let sched = db.schedulable_jobs().unwrap();
        let dep = &sched[0].deps[0];
        assert_eq!((dep.state, dep.has_output), (JobState::Failed, false));
        assert!(
            dep.blocks(),
            "Hydra fails an aggregate whose constituent failed"
        );
    }

    #[test]
    fn meta_should_be_stored_with_the_job_and_reach_the_scheduler_and_the_api() {
        let mut db = StatusDb::open_memory().unwrap();
        let meta = reconix_spec::JobMeta {
            description: Some("says hello".to_owned()),
            license: vec!["MIT".to_owned()],
            timeout: Some(5),
            scheduling_priority: Some(200),
            ..reconix_spec::JobMeta::default()
        };
        let mut hello = job(1, "hello");
        hello.meta = meta.clone();
        let e = building_eval(&mut db, "aaa", &[hello, job(2, "plain")]);
        let sched = db.schedulable_jobs().unwrap();
        assert_eq!(sched[0].meta, meta);
        assert!(sched[1].meta.is_empty());
        let jobs = db.jobs_of_evaluation(e).unwrap();
        let view = db.job_view(jobs[0].id).unwrap().unwrap();
        assert_eq!(view.job.meta, meta);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["meta"]["schedulingPriority"], 200);
        assert_eq!(json["meta"]["license"][0], "MIT");
        let plain = serde_json::to_value(db.job_view(jobs[1].id).unwrap().unwrap()).unwrap();
        assert!(plain.get("meta").is_none(), "{plain}");
        assert_eq!(db.job_page(jobs[0].id).unwrap().unwrap().meta, meta);
    }
}
