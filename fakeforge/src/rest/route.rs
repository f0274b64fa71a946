//! Routing: exactly the endpoints reconix's clients call, named by the schema operation
//! (`"<METHOD> <path template>"`) whose request and answers they are validated against.

use axum::http::Method;
use reconix_spec::ForgeKind;

/// One endpoint the clients call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    Repository,
    ListHooks,
    GetHook(u64),
    CreateHook,
    UpdateHook(u64),
    DeleteHook(u64),
    Branches,
    Pulls,
    Permission(String),
    Users,
    Member(u64),
    CreateStatus(String),
    CreateCheckRun,
    GetCheckRun(u64),
    UpdateCheckRun(u64),
}

/// A routed request: the schema operation, the repository and the action.
#[derive(Debug)]
pub(super) struct Route {
    pub(super) op: &'static str,
    pub(super) repo: Option<String>,
    pub(super) action: Action,
}

/// Decodes `%XX` escapes of one path segment.
pub(super) fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2]))
        {
            out.push((hi << 4) | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Returns the value of `name` in a query string (not decoded beyond `%XX`).
pub(super) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(&value.replace('+', " ")))
    })
}

pub(super) fn route(kind: ForgeKind, method: &Method, segments: &[&str]) -> Option<Route> {
    match kind {
        ForgeKind::Gitlab => route_gitlab(method, segments),
        ForgeKind::Github | ForgeKind::Gitea | ForgeKind::Local => {
            route_repos(kind == ForgeKind::Gitea, method, segments)
        }
    }
}

/// GitHub's and Gitea's `/repos/{owner}/{repo}/…`; the operation names follow each schema.
fn route_repos(gitea: bool, method: &Method, segments: &[&str]) -> Option<Route> {
    let ["repos", owner, name, rest @ ..] = segments else {
        return None;
    };
    let pick = |github: &'static str, gitea_op: &'static str| if gitea { gitea_op } else { github };
    let m = method.as_str();
    let (op, action) = match (m, rest) {
        ("GET", []) => ("GET /repos/{owner}/{repo}", Action::Repository),
        ("GET", ["hooks"]) => ("GET /repos/{owner}/{repo}/hooks", Action::ListHooks),
        ("POST", ["hooks"]) => ("POST /repos/{owner}/{repo}/hooks", Action::CreateHook),
        ("GET", ["hooks", id]) => (
            pick(
                "GET /repos/{owner}/{repo}/hooks/{hook_id}",
                "GET /repos/{owner}/{repo}/hooks/{id}",
            ),
            Action::GetHook(id.parse().ok()?),
        ),
        ("PATCH", ["hooks", id]) => (
            pick(
                "PATCH /repos/{owner}/{repo}/hooks/{hook_id}",
                "PATCH /repos/{owner}/{repo}/hooks/{id}",
            ),
            Action::UpdateHook(id.parse().ok()?),
        ),
        ("DELETE", ["hooks", id]) => (
            pick(
                "DELETE /repos/{owner}/{repo}/hooks/{hook_id}",
                "DELETE /repos/{owner}/{repo}/hooks/{id}",
            ),
            Action::DeleteHook(id.parse().ok()?),
        ),
        ("GET", ["branches"]) => ("GET /repos/{owner}/{repo}/branches", Action::Branches),
        ("GET", ["pulls"]) => ("GET /repos/{owner}/{repo}/pulls", Action::Pulls),
        ("GET", ["collaborators", user, "permission"]) => (
            pick(
                "GET /repos/{owner}/{repo}/collaborators/{username}/permission",
                "GET /repos/{owner}/{repo}/collaborators/{collaborator}/permission",
            ),
            Action::Permission((*user).to_owned()),
        ),
        ("POST", ["statuses", sha]) => (
            "POST /repos/{owner}/{repo}/statuses/{sha}",
            Action::CreateStatus((*sha).to_owned()),
        ),
        ("POST", ["check-runs"]) if !gitea => (
            "POST /repos/{owner}/{repo}/check-runs",
            Action::CreateCheckRun,
        ),
        ("GET", ["check-runs", id]) if !gitea => (
            "GET /repos/{owner}/{repo}/check-runs/{check_run_id}",
            Action::GetCheckRun(id.parse().ok()?),
        ),
        ("PATCH", ["check-runs", id]) if !gitea => (
            "PATCH /repos/{owner}/{repo}/check-runs/{check_run_id}",
            Action::UpdateCheckRun(id.parse().ok()?),
        ),
        _ => return None,
    };
    Some(Route {
        op,
        repo: Some(format!("{owner}/{name}")),
        action,
    })
}

/// GitLab's `/projects/{url-encoded path}/…` and `/users`.
fn route_gitlab(method: &Method, segments: &[&str]) -> Option<Route> {
    let m = method.as_str();
    if let (["users"], "GET") = (segments, m) {
        return Some(Route {
            op: "GET /users",
            repo: None,
            action: Action::Users,
        });
    }
    let ["projects", project, rest @ ..] = segments else {
        return None;
    };
    let (op, action) = match (m, rest) {
        ("GET", []) => ("GET /projects/{id}", Action::Repository),
        ("GET", ["hooks"]) => ("GET /projects/{id}/hooks", Action::ListHooks),
        ("POST", ["hooks"]) => ("POST /projects/{id}/hooks", Action::CreateHook),
        ("PUT", ["hooks", id]) => (
            "PUT /projects/{id}/hooks/{hook_id}",
            Action::UpdateHook(id.parse().ok()?),
        ),
        ("DELETE", ["hooks", id]) => (
            "DELETE /projects/{id}/hooks/{hook_id}",
            Action::DeleteHook(id.parse().ok()?),
        ),
        ("GET", ["repository", "branches"]) => {
            ("GET /projects/{id}/repository/branches", Action::Branches)
        }
        ("GET", ["merge_requests"]) => ("GET /projects/{id}/merge_requests", Action::Pulls),
        ("GET", ["members", "all", user]) => (
            "GET /projects/{id}/members/all/{user_id}",
            Action::Member(user.parse().ok()?),
        ),
        ("POST", ["statuses", sha]) => (
            "POST /projects/{id}/statuses/{sha}",
            Action::CreateStatus((*sha).to_owned()),
        ),
        _ => return None,
    };
    Some(Route {
        op,
        repo: Some((*project).to_owned()),
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decode_should_turn_encoded_slashes_back() {
        assert_eq!(percent_decode("group%2Fsub%2Fname"), "group/sub/name");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("plain"), "plain");
    }

    #[test]
    fn route_should_follow_each_schema_vocabulary() {
        let r = route(
            ForgeKind::Gitea,
            &Method::PATCH,
            &["repos", "o", "r", "hooks", "3"],
        )
        .unwrap();
        assert_eq!(r.op, "PATCH /repos/{owner}/{repo}/hooks/{id}");
        assert_eq!(r.action, Action::UpdateHook(3));
        let r = route(
            ForgeKind::Gitlab,
            &Method::GET,
            &["projects", "g/s/n", "members", "all", "7"],
        )
        .unwrap();
        assert_eq!(r.repo.as_deref(), Some("g/s/n"));
        assert!(
            route(
                ForgeKind::Gitea,
                &Method::POST,
                &["repos", "o", "r", "check-runs"]
            )
            .is_none()
        );
    }
}
