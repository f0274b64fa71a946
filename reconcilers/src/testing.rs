//! Fixtures shared by the loops' unit tests.

use reconix_spec::Timestamp;
use reconix_status::PullRequestRow;

/// Open pull request `number` by `author` from a fork at `sha`, `feature` into `main`, with the
/// author's looked-up write permission `can_write` (`None`: not looked up yet).
pub(crate) fn pull_request(
    number: u64,
    sha: &str,
    author: &str,
    can_write: Option<bool>,
) -> PullRequestRow {
    PullRequestRow {
        number,
        head_sha: sha.to_owned(),
        head_ref: "feature".to_owned(),
        base_ref: "main".to_owned(),
        author: Some(author.to_owned()),
        from_fork: true,
        open: true,
        author_can_write: can_write,
        observed_at: Timestamp(0),
    }
}
