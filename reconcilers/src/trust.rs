//! The pull-request trust gate: whether the head of a pull request may be evaluated.
//!
//! A pull request runs its author's code on the builders, so it is evaluated only when its
//! author is trusted: on the repository's `allowlist`, or allowed to write to the repository
//! (looked up by the `heads` loop for each new head). [`Trust::of`] is the one place that
//! decides; `heads` looks up what is [`Trust::Unknown`], `evaluations` evaluates what is
//! [`Trust::Trusted`] and `statuses` tells [`Trust::Untrusted`] pull requests why they wait.
//! A leaf module: it uses nothing else of this crate.

use reconix_status::PullRequestRow;

/// Says whether a pull request's head may be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Its author is allowlisted or may write to the repository: it is evaluated.
    Trusted,
    /// Its author may not write and is not allowlisted: it waits for a trusted push.
    Untrusted,
    /// Not known yet: the author's permission has not been looked up for this head.
    Unknown,
}

impl Trust {
    /// Decides the trust of a pull request by `author`, whose permission to write is
    /// `author_can_write` (`None` until looked up), given the repository's `allowlist`.
    ///
    /// The allowlist wins over a looked-up permission, so an allowlisted author is never looked
    /// up and never untrusted.
    pub fn of(author: Option<&str>, author_can_write: Option<bool>, allowlist: &[String]) -> Self {
        if author.is_some_and(|a| allowlist.iter().any(|allowed| allowed == a)) {
            return Self::Trusted;
        }
        match author_can_write {
            Some(true) => Self::Trusted,
            Some(false) => Self::Untrusted,
            None => Self::Unknown,
        }
    }

    /// Decides the trust of a recorded pull request (see [`Trust::of`]).
    pub fn of_row(pr: &PullRequestRow, allowlist: &[String]) -> Self {
        Self::of(pr.author.as_deref(), pr.author_can_write, allowlist)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowlist() -> Vec<String> {
        vec!["renovate".to_owned()]
    }

    #[test]
    fn author_who_may_write_should_be_trusted() {
        assert_eq!(
            Trust::of(Some("alice"), Some(true), &allowlist()),
            Trust::Trusted
        );
    }

    #[test]
    fn author_who_may_not_write_should_be_untrusted() {
        assert_eq!(
            Trust::of(Some("mallory"), Some(false), &allowlist()),
            Trust::Untrusted
        );
        assert_eq!(Trust::of(None, Some(false), &allowlist()), Trust::Untrusted);
    }

    #[test]
    fn allowlisted_author_should_be_trusted_whatever_the_permission() {
        for can_write in [None, Some(false), Some(true)] {
            assert_eq!(
                Trust::of(Some("renovate"), can_write, &allowlist()),
                Trust::Trusted,
                "{can_write:?}"
            );
        }
    }

    #[test]
    fn permission_not_looked_up_should_be_unknown() {
        assert_eq!(Trust::of(Some("bob"), None, &allowlist()), Trust::Unknown);
        assert_eq!(Trust::of(None, None, &allowlist()), Trust::Unknown);
        assert_eq!(Trust::of(Some("bob"), None, &[]), Trust::Unknown);
    }

    #[test]
    fn row_should_be_decided_from_its_author_and_permission() {
        let row = PullRequestRow {
            number: 1,
            head_sha: "aaa".to_owned(),
            head_ref: "feature".to_owned(),
            base_ref: "main".to_owned(),
            author: Some("renovate".to_owned()),
            from_fork: true,
            open: true,
            author_can_write: Some(false),
            observed_at: reconix_spec::Timestamp(0),
        };
        assert_eq!(Trust::of_row(&row, &allowlist()), Trust::Trusted);
        assert_eq!(Trust::of_row(&row, &[]), Trust::Untrusted);
    }
}
