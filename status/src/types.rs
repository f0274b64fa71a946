//! Row identifiers, state enums and the typed rows the queries return.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use reconix_spec::JobMeta;
use reconix_spec::names::{AttrPath, BuilderName, RepoKey, StorePath, System, Timestamp};
use serde::{Deserialize, Serialize};

macro_rules! id_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }
    };
}

id_newtype!(
    /// Identifies a row of `repos`.
    RepoId
);
id_newtype!(
    /// Identifies a row of `evaluations`; also the `<eval-id>` in GC-root paths.
    EvaluationId
);
id_newtype!(
    /// Identifies a row of `jobs`.
    JobId
);
id_newtype!(
    /// Identifies a row of `builds`.
    BuildId
);

/// Describes a string that is not one of a state enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`")]
pub struct ParseStateError {
    /// Which enum was being parsed, e.g. `job state`.
    pub kind: &'static str,
    /// The rejected input.
    pub value: String,
}

/// Writes states as an SQL list literal for `state IN …`: `('failed', 'timed-out')`. The texts are
/// the enums' own kebab-case names, which need no quoting.
pub(crate) fn sql_list<S: Copy + fmt::Display>(states: &[S]) -> String {
    let quoted: Vec<String> = states.iter().map(|s| format!("'{s}'")).collect();
    format!("({})", quoted.join(", "))
}

macro_rules! state_enum {
    (
        $(#[$meta:meta])* $name:ident, $kind:literal,
        terminal: [$($terminal:ident),*],
        { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Lists every state, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// Returns the kebab-case name stored in the database and shown in the API.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }

            /// Returns true when no further transition is expected from this state.
            pub const fn is_terminal(self) -> bool {
                matches!(self, $(Self::$terminal)|*)
            }

            /// Returns the states that are not terminal, as an SQL list for `state IN …`, e.g.
            /// `('queued', 'building')`: queries take the set from here, never spell it out.
            pub fn unfinished_sql() -> &'static str {
                static LIST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                    let unfinished: Vec<$name> =
                        $name::ALL.iter().copied().filter(|s| !s.is_terminal()).collect();
                    $crate::types::sql_list(&unfinished)
                });
                &LIST
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseStateError;
            fn from_str(s: &str) -> Result<Self, ParseStateError> {
                match s {
                    $($text => Ok(Self::$variant),)*
                    _ => Err(ParseStateError { kind: $kind, value: s.to_owned() }),
                }
            }
        }
    };
}
pub(crate) use state_enum;

state_enum!(
    /// Says where an evaluation is in `queued → evaluating → building → finished`, or whether it
    /// ended early as `failed` or `superseded`.
    EvaluationState, "evaluation state",
    terminal: [Finished, Failed, Superseded],
    {
        /// Waiting for the evaluations loop to run `nix eval`.
        Queued => "queued",
        /// `nix eval` is running.
        Evaluating => "evaluating",
        /// Jobs are recorded and the builds loop is working through them.
        Building => "building",
        /// Every job reached a terminal state.
        Finished => "finished",
        /// The flake as a whole could not be evaluated.
        Failed => "failed",
        /// A newer rev of the same ref arrived before this evaluation finished.
        Superseded => "superseded",
    }
);

impl EvaluationState {
    /// Returns true while Nix may still be evaluating it (`queued` or `evaluating`): the states
    /// in which it records what it finds.
    pub const fn is_evaluating(self) -> bool {
        matches!(self, Self::Queued | Self::Evaluating)
    }
}

state_enum!(
    /// Says where one job of an evaluation stands.
    JobState, "job state",
    terminal: [Succeeded, Failed, DependencyFailed, Cancelled, EvalFailed, Skipped],
    {
        /// Waiting for its dependencies or for a builder.
        Queued => "queued",
        /// Its drv is being built.
        Building => "building",
        /// Its drv was built (or had been built before).
        Succeeded => "succeeded",
        /// Its drv failed to build.
        Failed => "failed",
        /// A job it depends on did not succeed.
        DependencyFailed => "dependency-failed",
        /// Its evaluation was superseded before it was built.
        Cancelled => "cancelled",
        /// The attribute itself failed to evaluate; it has no drv.
        EvalFailed => "eval-failed",
        /// Not built on purpose: a job of a walked tree for a system the repository does not
        /// build (`error` says why). Visible, never a failure, and it blocks nobody: jobs that
        /// depend on its drv build it as part of their closure.
        Skipped => "skipped",
    }
);

state_enum!(
    /// Says where one realisation of a drv stands.
    BuildState, "build state",
    terminal: [Succeeded, Failed, TimedOut, Cancelled],
    {
        /// Dispatched but not started yet.
        Queued => "queued",
        /// A builder is running it.
        Running => "running",
        /// The outputs exist.
        Succeeded => "succeeded",
        /// The builder ran it and it failed.
        Failed => "failed",
        /// It exceeded its timeout or max-silent time.
        TimedOut => "timed-out",
        /// It was stopped because no live job needed it any more.
        Cancelled => "cancelled",
    }
);

impl JobState {
    /// Returns true for the states that count as a failure of the job, hence of its
    /// evaluation: `failed`, `dependency-failed` and `eval-failed`. `cancelled` is neither a
    /// failure nor a success.
    pub const fn is_failing(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::DependencyFailed | Self::EvalFailed
        )
    }

    /// The states that end a job without outputs, so a job depending on it can never build
    /// (it becomes `dependency-failed`): every terminal state but `succeeded` and `skipped`
    /// (a skipped job is no dependency of any job: evaluation leaves it out of every `deps`).
    pub const BLOCKING: &'static [Self] = &[
        Self::Failed,
        Self::DependencyFailed,
        Self::Cancelled,
        Self::EvalFailed,
    ];

    /// Returns true when a job in this state blocks its dependents ([`Self::BLOCKING`]).
    pub const fn blocks_dependents(self) -> bool {
        self.is_terminal() && !matches!(self, Self::Succeeded | Self::Skipped)
    }
}

impl BuildState {
    /// The ended states a rebuild resets to `queued`: every terminal state but `succeeded`.
    pub const RERUNNABLE: &'static [Self] = &[Self::Failed, Self::TimedOut, Self::Cancelled];

    /// Returns true for `succeeded` and `failed`: the result is final for the drv and later
    /// evaluations with the same drv reuse it instead of building again. `timed-out` and
    /// `cancelled` builds may be run again.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// A repository known to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    /// Its row id.
    pub id: RepoId,
    /// Its spec key, `<forge>/<repo>`.
    pub key: RepoKey,
}

/// The observed head of one ref of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefHead {
    /// The repository.
    pub repo_id: RepoId,
    /// The full ref name, e.g. `refs/heads/main`.
    pub name: String,
    /// The commit the ref points to.
    pub rev: String,
    /// When the ref was first seen pointing at `rev`.
    pub observed_at: Timestamp,
}

/// One evaluation of `(repo, ref, rev)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// Its row id.
    pub id: EvaluationId,
    /// The repository's row id.
    pub repo_id: RepoId,
    /// The repository's spec key.
    pub repo: RepoKey,
    /// The full ref name, e.g. `refs/heads/main`.
    pub ref_name: String,
    /// The evaluated commit.
    pub rev: String,
    /// The flake reference passed to Nix.
    pub flake_ref: String,
    /// Where it stands.
    pub state: EvaluationState,
    /// Why the evaluation as a whole failed, when it did.
    pub error: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last entered `evaluating`.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal state.
    pub finished_at: Option<Timestamp>,
    /// The evaluation that superseded it, if any (and not purged).
    pub superseded_by: Option<EvaluationId>,
}

/// One attribute of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Its row id.
    pub id: JobId,
    /// The evaluation it belongs to.
    pub evaluation_id: EvaluationId,
    /// The full attribute path.
    pub attr: AttrPath,
    /// A display name (usually the derivation name).
    pub name: String,
    /// The system it builds for; `None` only for an `eval-failed` job whose system was never
    /// learnt (e.g. a NixOS configuration that does not evaluate).
    pub system: Option<System>,
    /// Its derivation; `None` only for `eval-failed` jobs.
    pub drv_path: Option<StorePath>,
    /// Output name to store path.
    pub outputs: reconix_spec::Outputs,
    /// The jobs of the same evaluation it depends on, in id order.
    pub deps: Vec<JobId>,
    /// Where it stands.
    pub state: JobState,
    /// The evaluation or build error, when there is one.
    pub error: Option<String>,
    /// When it was recorded.
    pub created_at: Timestamp,
    /// When it last entered `building`.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal state.
    pub finished_at: Option<Timestamp>,
    /// For an aggregate job: its constituents, in the order written; `None` for any other job.
    pub constituents: Option<Vec<Constituent>>,
}

/// One constituent of an aggregate job, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Constituent {
    /// A job of the same evaluation (also a dependency of the aggregate).
    Job {
        /// The constituent job.
        id: JobId,
        /// Its attribute path.
        attr: AttrPath,
        /// Where it stands.
        state: JobState,
    },
    /// A derivation that is no job of the evaluation (Hydra accepts these too); it is built
    /// only if the aggregate's own derivation needs it.
    Derivation {
        /// The derivation.
        drv_path: StorePath,
    },
}

/// One constituent of a new aggregate job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewConstituent {
    /// A job of the same evaluation, by attribute path; it must be among the aggregate's deps.
    Job(AttrPath),
    /// A derivation that is no job of the evaluation.
    Derivation(StorePath),
}

/// A job as produced by an evaluation, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The full attribute path, unique within the evaluation.
    pub attr: AttrPath,
    /// A display name (usually the derivation name).
    pub name: String,
    /// The system it builds for; `None` only for an `eval-failed` job whose system was never
    /// learnt (e.g. a NixOS configuration that does not evaluate).
    pub system: Option<System>,
    /// Its derivation; must be `Some` for `queued` jobs.
    pub drv_path: Option<StorePath>,
    /// Output name to store path.
    pub outputs: reconix_spec::Outputs,
    /// Attribute paths of the jobs of the same evaluation it depends on.
    pub deps: Vec<AttrPath>,
    /// The system features its derivation requires (`requiredSystemFeatures`).
    pub required_features: Vec<String>,
    /// `queued` or `eval-failed`.
    pub state: JobState,
    /// The attribute's evaluation error, for `eval-failed` jobs.
    pub error: Option<String>,
    /// For an aggregate job: its constituents, in the order written; `None` for any other job.
    pub constituents: Option<Vec<NewConstituent>>,
    /// What reconix uses of its derivation's `meta`.
    pub meta: JobMeta,
}

/// A job recorded while its evaluation still runs
/// ([`StatusDb::record_streamed_jobs`](crate::StatusDb::record_streamed_jobs)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStreamedJob {
    /// The job as known so far: its `deps` name jobs recorded before it or in the same batch.
    pub job: NewJob,
    /// Whether it may be built before the evaluation ends (see the `buildable` column).
    pub buildable: bool,
}

/// One realisation of a drv, shared by every job with that drv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// Its row id.
    pub id: BuildId,
    /// The derivation built.
    pub drv_path: StorePath,
    /// The builder it was last dispatched to.
    pub builder: Option<BuilderName>,
    /// Where it stands.
    pub state: BuildState,
    /// The exit code of the build process, when it ended.
    pub exit_code: Option<i32>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Its log file under `<state-dir>/logs/`.
    pub log_path: Option<PathBuf>,
    /// The log's size when last recorded.
    pub log_size_bytes: Option<u64>,
    /// When the log was last recorded.
    pub log_updated_at: Option<Timestamp>,
    /// How many times it entered `running`.
    pub attempts: u32,
    /// When it was (last) queued.
    pub queued_at: Timestamp,
    /// When it last entered `running`.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal state.
    pub finished_at: Option<Timestamp>,
    /// The total NAR size of its outputs' closure, once it succeeded and was measured.
    pub closure_size_bytes: Option<u64>,
    /// While it waits for room on a full disk: when it may be dispatched again.
    pub retry_at: Option<Timestamp>,
    /// How many times in a row it had to wait for room (the backoff grows with it).
    pub waits: u32,
    /// Its outputs exist but one has `nix-support/failed`: its jobs fail, its dependents
    /// build (only with state `succeeded`).
    pub failed_with_output: bool,
    /// The first line of an output's `nix-support/hydra-release-name`.
    pub release_name: Option<String>,
}

/// The message of a job whose build failed with output ([`Build::failed_with_output`]).
pub const FAILED_WITH_OUTPUT: &str = "failed with output (nix-support/failed)";

/// The SQL condition (on a job `j`) of the jobs whose outputs are kept: rooted and viewable.
/// Those are the succeeded jobs and the failed ones whose build failed with output.
pub(crate) const KEEPS_OUTPUTS_SQL: &str = "(j.state = 'succeeded' OR (j.state = 'failed' AND \
     EXISTS (SELECT 1 FROM builds kb WHERE kb.drv_path = j.drv_path \
     AND kb.state = 'succeeded' AND kb.failed_with_output = 1)))";

/// One line of a build's `nix-support/hydra-build-products`, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildProduct {
    /// Its type, e.g. `file`, `doc`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its subtype, e.g. `binary-dist`.
    pub subtype: String,
    /// Its path as the build wrote it (not checked: a download checks it).
    pub path: String,
    /// For a directory product, the file inside it to open first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_path: Option<String>,
}

/// What a succeeded build's outputs say about it in `nix-support/`, recorded with its result
/// ([`crate::StatusDb::finish_built`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuiltOutputs {
    /// An output has `nix-support/failed`.
    pub failed: bool,
    /// The first line of an output's `nix-support/hydra-release-name`.
    pub release_name: Option<String>,
    /// The lines of the outputs' `nix-support/hydra-build-products`.
    pub products: Vec<BuildProduct>,
}

/// The state of one dependency of a [`SchedJob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedDep {
    /// Its attribute path (for messages such as "dependency … failed").
    pub attr: AttrPath,
    /// The job depended on.
    pub id: JobId,
    /// Its state.
    pub state: JobState,
    /// Whether the outputs of its drv exist (its build succeeded, possibly failing with
    /// output): then it never blocks its dependents, whatever its own state. Always false for
    /// the dependencies of an aggregate job, which succeeds only when every one succeeded.
    pub has_output: bool,
}

impl SchedDep {
    /// Returns true when this dependency makes its dependent `dependency-failed`: it ended
    /// ([`JobState::blocks_dependents`]) without outputs.
    pub const fn blocks(&self) -> bool {
        self.state.blocks_dependents() && !self.has_output
    }

    /// Returns true when its dependent may be built as far as this dependency goes: it
    /// succeeded, or its outputs exist all the same (a build that failed with output).
    pub fn is_ready(&self) -> bool {
        self.state == JobState::Succeeded || self.has_output
    }
}

/// What the builds loop needs to know about one unfinished job of a live evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedJob {
    /// The job.
    pub id: JobId,
    /// Its evaluation (`building`, or `evaluating` or timed out when the job is buildable).
    pub evaluation_id: EvaluationId,
    /// The repository of its evaluation.
    pub repo: RepoKey,
    /// Its attribute path.
    pub attr: AttrPath,
    /// Its derivation.
    pub drv_path: StorePath,
    /// The system it builds for.
    pub system: System,
    /// The system features its derivation requires, sorted.
    pub required_features: Vec<String>,
    /// `queued` or `building`.
    pub state: JobState,
    /// Its dependencies and their states, in id order.
    pub deps: Vec<SchedDep>,
    /// The build of its drv, if one was ever recorded.
    pub build: Option<Build>,
    /// What reconix uses of its derivation's `meta` (limits, priority).
    pub meta: JobMeta,
}

/// A GC root registered for one output of a succeeded job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcRoot {
    /// The rooted job.
    pub job_id: JobId,
    /// The job's evaluation.
    pub evaluation_id: EvaluationId,
    /// The root link on disk.
    pub path: PathBuf,
    /// The output name, e.g. `out`.
    pub output: String,
    /// When it was registered.
    pub created_at: Timestamp,
}

/// Health of one reconcile loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopHealth {
    /// The loop's name, e.g. `builds`.
    pub name: String,
    /// How many runs were recorded.
    pub runs: u64,
    /// When the last run ended.
    pub last_run_at: Option<Timestamp>,
    /// When the last successful run ended.
    pub last_success_at: Option<Timestamp>,
    /// The error of the last failed run; kept after a later success (see `consecutive_failures`).
    pub last_error: Option<String>,
    /// Failed runs since the last success; 0 means healthy.
    pub consecutive_failures: u32,
    /// When the loop plans to run next.
    pub next_run_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_should_round_trip_through_its_string() {
        for s in EvaluationState::ALL {
            assert_eq!(s.as_str().parse::<EvaluationState>().unwrap(), *s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), *s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in BuildState::ALL {
            assert_eq!(s.as_str().parse::<BuildState>().unwrap(), *s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn the_sql_lists_should_be_the_unfinished_states_of_each_enum() {
        assert_eq!(JobState::unfinished_sql(), "('queued', 'building')");
        assert_eq!(
            EvaluationState::unfinished_sql(),
            "('queued', 'evaluating', 'building')"
        );
        assert_eq!(BuildState::unfinished_sql(), "('queued', 'running')");
        assert_eq!(
            sql_list(BuildState::RERUNNABLE),
            "('failed', 'timed-out', 'cancelled')"
        );
        assert!(
            BuildState::RERUNNABLE
                .iter()
                .all(|s| s.is_terminal() && *s != BuildState::Succeeded)
        );
    }

    #[test]
    fn parsing_an_unknown_state_should_name_the_enum() {
        let err = "done".parse::<JobState>().unwrap_err();
        assert_eq!(err.to_string(), "unknown job state `done`");
    }

    #[test]
    fn terminal_states_should_match_the_architecture() {
        let terminal: Vec<_> = JobState::ALL.iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(
            terminal,
            [
                &JobState::Succeeded,
                &JobState::Failed,
                &JobState::DependencyFailed,
                &JobState::Cancelled,
                &JobState::EvalFailed,
                &JobState::Skipped
            ]
        );
        assert!(!EvaluationState::Building.is_terminal());
        assert!(EvaluationState::Superseded.is_terminal());
        assert!(BuildState::TimedOut.is_terminal());
        assert!(!BuildState::TimedOut.is_final());
        assert!(BuildState::Failed.is_final());
    }

    #[test]
    fn blocking_job_states_should_be_every_terminal_state_but_succeeded() {
        let blocking: Vec<JobState> = JobState::ALL
            .iter()
            .copied()
            .filter(|s| s.blocks_dependents())
            .collect();
        assert_eq!(blocking, JobState::BLOCKING);
        assert_eq!(
            sql_list(JobState::BLOCKING),
            "('failed', 'dependency-failed', 'cancelled', 'eval-failed')"
        );
    }

    #[test]
    fn failing_job_states_should_be_failed_dependency_failed_and_eval_failed() {
        let failing: Vec<_> = JobState::ALL.iter().filter(|s| s.is_failing()).collect();
        assert_eq!(
            failing,
            [
                &JobState::Failed,
                &JobState::DependencyFailed,
                &JobState::EvalFailed
            ]
        );
        assert!(
            JobState::ALL
                .iter()
                .all(|s| !s.is_failing() || s.is_terminal())
        );
    }

    #[test]
    fn ids_should_serialize_as_bare_numbers() {
        assert_eq!(serde_json::to_string(&JobId(7)).unwrap(), "7");
        assert_eq!(EvaluationId(42).to_string(), "42");
        assert_eq!("3".parse::<BuildId>().unwrap(), BuildId(3));
    }
}
