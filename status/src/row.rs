//! Parsing of raw column values into validated types, shared by every query module.
//!
//! Each `*_COLUMNS` constant is the select list its `parse_*` function reads, in order; keep
//! the two together when adding a column.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use reconix_spec::JobMeta;
use reconix_spec::names::{ForgeName, RepoKey, RepoName, Timestamp};
use rusqlite::Row;
use rusqlite::types::FromSql;

use crate::error::{Error, QueryExt, Result};
use crate::types::{Build, BuildId, Evaluation, EvaluationId, Job, JobId, RepoId};

/// Reads column `idx` of `row`, mapping a type mismatch to [`Error::Query`].
pub(crate) fn get<T: FromSql>(row: &Row<'_>, idx: usize, op: &'static str) -> Result<T> {
    row.get(idx).op(op)
}

/// Parses a stored string, naming the table and column when it is malformed.
pub(crate) fn parse<T>(table: &'static str, column: &'static str, value: String) -> Result<T>
where
    T: FromStr,
    T::Err: Display,
{
    value.parse().map_err(|e: T::Err| Error::Corrupt {
        table,
        column,
        reason: e.to_string(),
        value,
    })
}

/// Parses an optional stored string.
pub(crate) fn parse_opt<T>(
    table: &'static str,
    column: &'static str,
    value: Option<String>,
) -> Result<Option<T>>
where
    T: FromStr,
    T::Err: Display,
{
    value.map(|v| parse(table, column, v)).transpose()
}

/// Converts a stored integer that must not be negative.
pub(crate) fn non_negative<T: TryFrom<i64>>(
    table: &'static str,
    column: &'static str,
    value: i64,
) -> Result<T> {
    T::try_from(value).map_err(|_| Error::Corrupt {
        table,
        column,
        value: value.to_string(),
        reason: "out of range".to_owned(),
    })
}

/// Converts a count or id to store it; SQLite integers are signed.
pub(crate) fn to_i64(value: u64, what: &'static str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Invalid {
        op: "forges",
        reason: format!("{what} {value} is out of range"),
    })
}

/// Returns the UTF-8 text of a path to store it; SQLite text columns cannot hold other bytes.
pub(crate) fn path_text<'p>(op: &'static str, path: &'p Path) -> Result<&'p str> {
    path.to_str().ok_or_else(|| Error::Invalid {
        op,
        reason: format!("path {} is not valid UTF-8", path.display()),
    })
}

/// Serializes job outputs to the JSON text stored in `jobs.outputs`.
pub(crate) fn outputs_json(op: &'static str, outputs: &reconix_spec::Outputs) -> Result<String> {
    serde_json::to_string(outputs).map_err(|e| Error::Invalid {
        op,
        reason: format!("cannot serialize outputs: {e}"),
    })
}

/// Serialises a job's required system features (a JSON array of strings).
pub(crate) fn features_json(features: &[String]) -> String {
    serde_json::to_string(features).unwrap_or_else(|_| "[]".to_owned())
}

/// Serialises a job's meta (a JSON object, `{}` when empty).
pub(crate) fn meta_json(meta: &JobMeta) -> String {
    serde_json::to_string(meta).unwrap_or_else(|_| "{}".to_owned())
}

/// Parses the `jobs.meta` column.
pub(crate) fn parse_meta(value: String) -> Result<JobMeta> {
    serde_json::from_str(&value).map_err(|e| Error::Corrupt {
        table: "jobs",
        column: "meta",
        reason: e.to_string(),
        value,
    })
}

/// Parses the `jobs.required_features` column.
pub(crate) fn parse_features(value: String) -> Result<Vec<String>> {
    serde_json::from_str(&value).map_err(|e| Error::Corrupt {
        table: "jobs",
        column: "required_features",
        reason: e.to_string(),
        value,
    })
}

fn parse_outputs(value: String) -> Result<reconix_spec::Outputs> {
    serde_json::from_str(&value).map_err(|e| Error::Corrupt {
        table: "jobs",
        column: "outputs",
        reason: e.to_string(),
        value,
    })
}

fn timestamp(row: &Row<'_>, idx: usize, op: &'static str) -> Result<Timestamp> {
    get::<i64>(row, idx, op).map(Timestamp)
}

fn timestamp_opt(row: &Row<'_>, idx: usize, op: &'static str) -> Result<Option<Timestamp>> {
    Ok(get::<Option<i64>>(row, idx, op)?.map(Timestamp))
}

/// Parses a repo key from its two columns.
pub(crate) fn parse_repo_key(forge: String, name: String) -> Result<RepoKey> {
    Ok(RepoKey::new(
        parse::<ForgeName>("repos", "forge", forge)?,
        parse::<RepoName>("repos", "name", name)?,
    ))
}

/// The select list read by [`parse_evaluation`]; needs `evaluations e JOIN repos r`.
pub(crate) const EVALUATION_COLUMNS: &str = "e.id, e.repo_id, r.forge, r.name, e.ref, e.rev, \
     e.flake_ref, e.state, e.error, e.created_at, e.started_at, e.finished_at, e.superseded_by";

/// Parses a row selected with [`EVALUATION_COLUMNS`].
pub(crate) fn parse_evaluation(row: &Row<'_>, op: &'static str) -> Result<Evaluation> {
    Ok(Evaluation {
        id: EvaluationId(get(row, 0, op)?),
        repo_id: RepoId(get(row, 1, op)?),
        repo: parse_repo_key(get(row, 2, op)?, get(row, 3, op)?)?,
        ref_name: get(row, 4, op)?,
        rev: get(row, 5, op)?,
        flake_ref: get(row, 6, op)?,
        state: parse("evaluations", "state", get(row, 7, op)?)?,
        error: get(row, 8, op)?,
        created_at: timestamp(row, 9, op)?,
        started_at: timestamp_opt(row, 10, op)?,
        finished_at: timestamp_opt(row, 11, op)?,
        superseded_by: get::<Option<i64>>(row, 12, op)?.map(EvaluationId),
    })
}

/// The select list read by [`parse_job`]; needs `jobs j`.
pub(crate) const JOB_COLUMNS: &str = "j.id, j.evaluation_id, j.attr, j.name, j.system, \
     j.drv_path, j.outputs, j.state, j.error, j.created_at, j.started_at, j.finished_at, \
     j.aggregate";

/// Parses a row selected with [`JOB_COLUMNS`]; `deps` and the constituents of an aggregate
/// (here an empty list) are filled in by the caller.
pub(crate) fn parse_job(row: &Row<'_>, op: &'static str) -> Result<Job> {
    Ok(Job {
        id: JobId(get(row, 0, op)?),
        evaluation_id: EvaluationId(get(row, 1, op)?),
        attr: parse("jobs", "attr", get(row, 2, op)?)?,
        name: get(row, 3, op)?,
        system: parse_opt("jobs", "system", get(row, 4, op)?)?,
        drv_path: parse_opt("jobs", "drv_path", get(row, 5, op)?)?,
        outputs: parse_outputs(get(row, 6, op)?)?,
        deps: Vec::new(),
        state: parse("jobs", "state", get(row, 7, op)?)?,
        error: get(row, 8, op)?,
        created_at: timestamp(row, 9, op)?,
        started_at: timestamp_opt(row, 10, op)?,
        finished_at: timestamp_opt(row, 11, op)?,
        constituents: get::<bool>(row, 12, op)?.then(Vec::new),
    })
}

/// The select list read by [`parse_build`]; needs `builds b` (may be a LEFT JOIN).
pub(crate) const BUILD_COLUMNS: &str = "b.id, b.drv_path, b.builder, b.state, b.exit_code, \
     b.error, b.log_path, b.log_size_bytes, b.log_updated_at, b.attempts, b.queued_at, \
     b.started_at, b.finished_at, b.closure_size_bytes, b.retry_at, b.waits, \
     b.failed_with_output, b.release_name";

/// Parses a row selected with [`BUILD_COLUMNS`] starting at column `at`; returns `None` when
/// the build id is NULL (no row on the right of a LEFT JOIN).
pub(crate) fn parse_build(row: &Row<'_>, at: usize, op: &'static str) -> Result<Option<Build>> {
    let Some(id) = get::<Option<i64>>(row, at, op)? else {
        return Ok(None);
    };
    Ok(Some(Build {
        id: BuildId(id),
        drv_path: parse("builds", "drv_path", get(row, at + 1, op)?)?,
        builder: parse_opt("builds", "builder", get(row, at + 2, op)?)?,
        state: parse("builds", "state", get(row, at + 3, op)?)?,
        exit_code: get(row, at + 4, op)?,
        error: get(row, at + 5, op)?,
        log_path: get::<Option<String>>(row, at + 6, op)?.map(PathBuf::from),
        log_size_bytes: get::<Option<i64>>(row, at + 7, op)?
            .map(|n| non_negative("builds", "log_size_bytes", n))
            .transpose()?,
        log_updated_at: timestamp_opt(row, at + 8, op)?,
        attempts: non_negative("builds", "attempts", get(row, at + 9, op)?)?,
        queued_at: timestamp(row, at + 10, op)?,
        started_at: timestamp_opt(row, at + 11, op)?,
        finished_at: timestamp_opt(row, at + 12, op)?,
        closure_size_bytes: get::<Option<i64>>(row, at + 13, op)?
            .map(|n| non_negative("builds", "closure_size_bytes", n))
            .transpose()?,
        retry_at: timestamp_opt(row, at + 14, op)?,
        waits: non_negative("builds", "waits", get(row, at + 15, op)?)?,
        failed_with_output: get(row, at + 16, op)?,
        release_name: get(row, at + 17, op)?,
    }))
}
