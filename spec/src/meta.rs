//! [`JobMeta`]: what a job's derivation says about itself in `meta`, as evaluation extracts it
//! (Hydra's per-job settings and the fields shown on the job page).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Hydra's default `meta.schedulingPriority`: jobs without one rank here.
pub const DEFAULT_SCHEDULING_PRIORITY: i64 = 100;

/// The parts of a derivation's `meta` reconix uses. Every field is optional: a missing or
/// malformed field is `None` (or empty), never an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JobMeta {
    /// `meta.description`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `meta.homepage` (the first one when it is a list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub homepage: Option<String>,
    /// `meta.license`: SPDX ids, else short or full names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub license: Vec<String>,
    /// `meta.maintainers`: names, else GitHub handles or e-mail addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub maintainers: Vec<String>,
    /// `meta.timeout`, in seconds: replaces the repository's `timeout` for this job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// `meta.maxSilent`, in seconds: replaces the repository's `max-silent` for this job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_silent: Option<i64>,
    /// `meta.schedulingPriority`: among builds ready at once, higher goes first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduling_priority: Option<i64>,
}

/// Returns a positive number of seconds as a duration (0 or less means "not set": Nix reads a
/// zero limit as none, which a job must not get by accident).
fn seconds(value: Option<i64>) -> Option<Duration> {
    value
        .and_then(|s| u64::try_from(s).ok())
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
}

impl JobMeta {
    /// Returns the job's build timeout: `meta.timeout` when it is a positive number of
    /// seconds, else `repo` (the repository's `timeout`).
    pub fn timeout_or(&self, repo: Duration) -> Duration {
        seconds(self.timeout).unwrap_or(repo)
    }

    /// Returns the job's maximum time without output: `meta.maxSilent` when it is a positive
    /// number of seconds, else `repo` (the repository's `max-silent`).
    pub fn max_silent_or(&self, repo: Duration) -> Duration {
        seconds(self.max_silent).unwrap_or(repo)
    }

    /// Returns the job's scheduling priority (higher first; Hydra's default 100 when unset).
    pub fn priority(&self) -> i64 {
        self.scheduling_priority
            .unwrap_or(DEFAULT_SCHEDULING_PRIORITY)
    }

    /// Returns true when there is nothing to show or use.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_limits_should_replace_the_repository_s_only_when_positive() {
        let repo = Duration::from_secs(3600);
        let meta = JobMeta {
            timeout: Some(5),
            max_silent: Some(0),
            ..JobMeta::default()
        };
        assert_eq!(meta.timeout_or(repo), Duration::from_secs(5));
        assert_eq!(meta.max_silent_or(repo), repo, "0 is not a limit");
        let negative = JobMeta {
            timeout: Some(-1),
            ..JobMeta::default()
        };
        assert_eq!(negative.timeout_or(repo), repo);
        assert_eq!(JobMeta::default().timeout_or(repo), repo);
    }

    #[test]
    fn priority_should_default_to_hydra_s() {
        assert_eq!(JobMeta::default().priority(), 100);
        let meta = JobMeta {
            scheduling_priority: Some(200),
            ..JobMeta::default()
        };
        assert_eq!(meta.priority(), 200);
    }

    #[test]
    fn meta_json_should_accept_nulls_and_missing_fields_and_round_trip() {
        let meta: JobMeta = serde_json::from_str(
            r#"{"description":"hi","homepage":null,"license":["MIT"],"maxSilent":7,"schedulingPriority":null}"#,
        )
        .unwrap();
        assert_eq!(meta.description.as_deref(), Some("hi"));
        assert_eq!((meta.homepage, meta.max_silent), (None, Some(7)));
        assert_eq!(meta.license, ["MIT"]);
        let meta: JobMeta = serde_json::from_str("{}").unwrap();
        assert!(meta.is_empty());
        assert_eq!(serde_json::to_string(&meta).unwrap(), "{}");
    }
}
