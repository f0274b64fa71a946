//! Rendering of the state in each forge's JSON shape.

use reconix_spec::ForgeKind;
use serde_json::{Value, json};

use crate::state::RepoState;
use crate::{FakeCheckRun, FakeHook, FakePermission, FakePr, FakeStatus, schema};

pub(super) const TIMESTAMP: &str = "2026-01-01T00:00:00Z";

pub(super) fn gitlab_user(ctx: &Ctx, id: u64, username: &str) -> Value {
    json!({
        "id": id,
        "username": username,
        "name": username,
        "state": "active",
        "avatar_url": null,
        "web_url": format!("{}/{username}", ctx.web),
    })
}

/// Renders the state in each forge's JSON shape. GitHub's answers start from the schema's
/// own `components.examples`; Gitea's and GitLab's are written from their field lists.
pub(super) struct Ctx {
    pub(super) kind: ForgeKind,
    pub(super) api: String,
    pub(super) web: String,
}

impl Ctx {
    fn example(&self, name: &str) -> Value {
        schema::compiled(ForgeKind::Github).example(name)
    }

    fn first_example(&self, name: &str) -> Value {
        match self.example(name) {
            Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
            other => other,
        }
    }

    pub(super) fn repository(&self, repo: &RepoState) -> Value {
        let (owner, name) = repo.owner_and_name();
        let full = &repo.name;
        match self.kind {
            ForgeKind::Gitlab => json!({
                "id": repo.id,
                "name": name,
                "path": name,
                "path_with_namespace": full,
                "default_branch": repo.default_branch,
                "web_url": format!("{}/{full}", self.web),
                "http_url_to_repo": format!("{}/{full}.git", self.web),
            }),
            ForgeKind::Gitea => json!({
                "id": repo.id,
                "name": name,
                "full_name": full,
                "owner": {"id": 1, "login": owner, "username": owner},
                "default_branch": repo.default_branch,
                "empty": false,
                "private": false,
                "fork": false,
                "html_url": format!("{}/{full}", self.web),
                "clone_url": format!("{}/{full}.git", self.web),
            }),
            ForgeKind::Github | ForgeKind::Local => {
                let mut v = self.example("full-repository-default-response");
                v["id"] = json!(repo.id);
                v["name"] = json!(name);
                v["full_name"] = json!(full);
                v["owner"]["login"] = json!(owner);
                v["default_branch"] = json!(repo.default_branch);
                v["private"] = json!(false);
                v["url"] = json!(format!("{}/repos/{full}", self.api));
                v["html_url"] = json!(format!("{}/{full}", self.web));
                v["clone_url"] = json!(format!("{}/{full}.git", self.web));
                v
            }
        }
    }

    pub(super) fn hook(&self, repo: &RepoState, hook: &FakeHook) -> Value {
        let full = &repo.name;
        let has = |event: &str| hook.events.iter().any(|e| e == event);
        match self.kind {
            ForgeKind::Gitlab => json!({
                "id": hook.id,
                "url": hook.url,
                "name": "",
                "description": "",
                "project_id": repo.id,
                "push_events": has("push"),
                "push_events_branch_filter": "",
                "issues_events": false,
                "confidential_issues_events": false,
                "merge_requests_events": has("pull_request"),
                "tag_push_events": has("push"),
                "note_events": false,
                "confidential_note_events": false,
                "job_events": false,
                "pipeline_events": false,
                "wiki_page_events": false,
                "deployment_events": false,
                "releases_events": false,
                "feature_flag_events": false,
                "enable_ssl_verification": true,
                "repository_update_events": false,
                "alert_status": if hook.active { "executable" } else { "disabled" },
                "disabled_until": null,
                "url_variables": [],
                "created_at": TIMESTAMP,
                "resource_access_token_events": false,
                "custom_webhook_template": null,
                "custom_headers": [],
            }),
            // Gitea never returns the secret.
            ForgeKind::Gitea => json!({
                "id": hook.id,
                "type": "gitea",
                "name": "",
                "active": hook.active,
                "events": hook.events,
                "config": {"url": hook.url, "content_type": hook.content_type, "http_method": "post"},
                "branch_filter": "*",
                "authorization_header": "",
                "created_at": TIMESTAMP,
                "updated_at": TIMESTAMP,
            }),
            ForgeKind::Github | ForgeKind::Local => {
                let base = format!("{}/repos/{full}/hooks/{}", self.api, hook.id);
                let mut v = self.example("hook");
                v["type"] = json!("Repository");
                v["id"] = json!(hook.id);
                v["name"] = json!("web");
                v["active"] = json!(hook.active);
                v["events"] = json!(hook.events);
                let mut config = json!({
                    "url": hook.url,
                    "content_type": hook.content_type,
                    "insecure_ssl": "0",
                });
                if hook.secret.is_some() {
                    // GitHub masks the secret when reading a hook back.
                    config["secret"] = json!("********");
                }
                v["config"] = config;
                v["url"] = json!(base);
                v["test_url"] = json!(format!("{base}/test"));
                v["ping_url"] = json!(format!("{base}/pings"));
                v["deliveries_url"] = json!(format!("{base}/deliveries"));
                v
            }
        }
    }

    pub(super) fn branch(&self, repo: &str, name: &str, sha: &str, default: bool) -> Value {
        match self.kind {
            ForgeKind::Gitlab => json!({
                "name": name,
                "merged": false,
                "protected": false,
                "default": default,
                "developers_can_push": false,
                "developers_can_merge": false,
                "can_push": true,
                "web_url": format!("{}/{repo}/-/tree/{name}", self.web),
                "commit": {
                    "id": sha,
                    "short_id": sha.get(..8).unwrap_or(sha),
                    "title": "",
                    "message": "",
                    "parent_ids": [],
                    "web_url": format!("{}/{repo}/-/commit/{sha}", self.web),
                },
            }),
            ForgeKind::Gitea => json!({
                "name": name,
                "commit": {
                    "id": sha,
                    "message": "",
                    "url": format!("{}/{repo}/commit/{sha}", self.web),
                },
                "protected": false,
                "user_can_push": true,
                "user_can_merge": true,
                "effective_branch_protection_name": "",
                "enable_status_check": false,
                "status_check_contexts": [],
                "required_approvals": 0,
            }),
            ForgeKind::Github | ForgeKind::Local => {
                let mut v = self.first_example("short-branch-with-protection-items");
                v["name"] = json!(name);
                v["commit"] = json!({
                    "sha": sha,
                    "url": format!("{}/repos/{repo}/commits/{sha}", self.api),
                });
                v["protected"] = json!(false);
                v
            }
        }
    }

    pub(super) fn pull(&self, repo: &RepoState, pr: &FakePr, author_id: u64) -> Value {
        let (owner, name) = repo.owner_and_name();
        let full = &repo.name;
        let head_owner = if pr.from_fork {
            pr.author.as_str()
        } else {
            owner
        };
        let head_full = format!("{head_owner}/{name}");
        let fork_id = repo.id + 1000;
        match self.kind {
            ForgeKind::Gitlab => json!({
                "id": repo.id * 1000 + pr.number,
                "iid": pr.number,
                "project_id": repo.id,
                "title": format!("Merge request {}", pr.number),
                "state": "opened",
                "sha": pr.head_sha,
                "source_branch": pr.head_ref,
                "target_branch": pr.base_ref,
                "source_project_id": if pr.from_fork { fork_id } else { repo.id },
                "target_project_id": repo.id,
                "author": gitlab_user(self, author_id, &pr.author),
                "web_url": format!("{}/{full}/-/merge_requests/{}", self.web, pr.number),
            }),
            ForgeKind::Gitea => {
                let repo_json = |id: u64, owner: &str| {
                    json!({
                        "id": id,
                        "name": name,
                        "full_name": format!("{owner}/{name}"),
                        "owner": {"id": 1, "login": owner},
                    })
                };
                let head_id = if pr.from_fork { fork_id } else { repo.id };
                json!({
                    "id": repo.id * 1000 + pr.number,
                    "number": pr.number,
                    "state": "open",
                    "title": format!("Pull request {}", pr.number),
                    "user": {"id": author_id, "login": pr.author},
                    "merged": false,
                    "html_url": format!("{}/{full}/pulls/{}", self.web, pr.number),
                    "head": {
                        "label": pr.head_ref,
                        "ref": pr.head_ref,
                        "sha": pr.head_sha,
                        "repo_id": head_id,
                        "repo": repo_json(head_id, head_owner),
                    },
                    "base": {
                        "label": pr.base_ref,
                        "ref": pr.base_ref,
                        "sha": pr.head_sha,
                        "repo_id": repo.id,
                        "repo": repo_json(repo.id, owner),
                    },
                })
            }
            ForgeKind::Github | ForgeKind::Local => {
                let mut v = self.first_example("pull-request-simple-items");
                v["id"] = json!(repo.id * 1000 + pr.number);
                v["number"] = json!(pr.number);
                v["state"] = json!("open");
                v["user"]["login"] = json!(pr.author);
                v["user"]["id"] = json!(author_id);
                v["head"]["ref"] = json!(pr.head_ref);
                v["head"]["sha"] = json!(pr.head_sha);
                v["head"]["label"] = json!(format!("{head_owner}:{}", pr.head_ref));
                v["head"]["user"]["login"] = json!(head_owner);
                v["head"]["repo"]["full_name"] = json!(head_full);
                v["head"]["repo"]["name"] = json!(name);
                v["head"]["repo"]["fork"] = json!(pr.from_fork);
                v["head"]["repo"]["owner"]["login"] = json!(head_owner);
                v["base"]["ref"] = json!(pr.base_ref);
                v["base"]["label"] = json!(format!("{owner}:{}", pr.base_ref));
                v["base"]["user"]["login"] = json!(owner);
                v["base"]["repo"]["full_name"] = json!(full);
                v["base"]["repo"]["name"] = json!(name);
                v["base"]["repo"]["fork"] = json!(false);
                v["base"]["repo"]["owner"]["login"] = json!(owner);
                v
            }
        }
    }

    pub(super) fn permission(&self, level: FakePermission, user: &str, user_id: u64) -> Value {
        let word = match level {
            FakePermission::None => "none",
            FakePermission::Read => "read",
            FakePermission::Write => "write",
            FakePermission::Admin => "admin",
        };
        match self.kind {
            ForgeKind::Gitea => json!({
                "permission": word,
                "role_name": word,
                "user": {"id": user_id, "login": user, "username": user},
            }),
            ForgeKind::Github | ForgeKind::Gitlab | ForgeKind::Local => {
                let mut v = self.example(
                    "repository-collaborator-permission-response-if-user-has-admin-permissions",
                );
                v["permission"] = json!(word);
                v["user"]["login"] = json!(user);
                v["user"]["id"] = json!(user_id);
                v
            }
        }
    }

    pub(super) fn status(
        &self,
        repo: &RepoState,
        id: u64,
        sha: &str,
        status: &FakeStatus,
    ) -> Value {
        match self.kind {
            ForgeKind::Gitlab => json!({
                "id": id,
                "sha": sha,
                "ref": null,
                "status": status.state,
                "name": status.context,
                "target_url": status.target_url,
                "description": status.description,
                "created_at": TIMESTAMP,
                "started_at": null,
                "finished_at": null,
                "allow_failure": false,
                "coverage": null,
                "author": gitlab_user(self, 1, "reconix"),
            }),
            ForgeKind::Gitea => json!({
                "id": id,
                "status": status.state,
                "context": status.context,
                "description": status.description.clone().unwrap_or_default(),
                "target_url": status.target_url.clone().unwrap_or_default(),
                "url": format!("{}/repos/{}/statuses/{sha}", self.api, repo.name),
                "created_at": TIMESTAMP,
                "updated_at": TIMESTAMP,
            }),
            ForgeKind::Github | ForgeKind::Local => {
                let mut v = self.example("status");
                v["id"] = json!(id);
                v["state"] = json!(status.state);
                v["context"] = json!(status.context);
                v["description"] = json!(status.description);
                v["target_url"] = json!(status.target_url);
                v["url"] = json!(format!("{}/repos/{}/statuses/{sha}", self.api, repo.name));
                v
            }
        }
    }

    pub(super) fn check_run(&self, repo: &RepoState, run: &FakeCheckRun) -> Value {
        let mut v = self.example("check-run");
        v["id"] = json!(run.id);
        v["name"] = json!(run.name);
        v["head_sha"] = json!(run.head_sha);
        v["status"] = json!(run.status);
        v["conclusion"] = json!(run.conclusion);
        v["details_url"] = json!(run.details_url);
        v["url"] = json!(format!(
            "{}/repos/{}/check-runs/{}",
            self.api, repo.name, run.id
        ));
        if run.status != "completed" {
            v["completed_at"] = Value::Null;
        }
        v["output"]["title"] = json!(run.output_title);
        v["output"]["summary"] = json!(run.output_summary);
        v
    }
}
