//! The REST side: routing of exactly the endpoints reconix's clients call, authentication,
//! pagination, schema validation of bodies, and the handlers that read and change the state.

mod render;
mod route;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reconix_spec::ForgeKind;
use serde_json::{Value, json};

use crate::{FakeCheckRun, FakeHook, FakePermission, FakeStatus, Inner, git, schema};
use render::{Ctx, TIMESTAMP, gitlab_user};
use route::{Action, Route, percent_decode, query_param, route};

/// What a handler answers.
struct Reply {
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: Option<Value>,
}

impl Reply {
    fn json(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Some(body),
        }
    }

    fn empty(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: None,
        }
    }
}

/// Serves one API request.
pub(crate) async fn serve(
    inner: &Inner,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let kind = inner.kind;
    let api_path = inner.api_url();
    let api_prefix = api_path.trim_start_matches(&inner.web_url());
    let Some(rest) = path.strip_prefix(api_prefix) else {
        return respond(not_found(kind));
    };
    let token = inner.lock().token.clone();
    if !authorized(kind, headers, &token) {
        return respond(unauthorized(kind, &inner.web_url()));
    }
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let Some(route) = route(kind, method, &segments) else {
        return respond(not_found(kind));
    };
    let compiled = schema::compiled(kind);
    let what = format!("{method} {path}");
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(value) => value,
            Err(err) => {
                let message = format!("request {what}: body is not JSON: {err}");
                inner.lock().violations.push(message.clone());
                return respond(validation_failed(kind, &message));
            }
        }
    };
    if compiled.has_request(route.op)
        && let Err(err) = compiled.validate(route.op, "request", &body)
    {
        let message = format!("request {what} ({}): {err}", route.op);
        inner.lock().violations.push(message.clone());
        return respond(validation_failed(kind, &message));
    }
    let reply = execute(inner, &route, query, path, &body).await;
    if let Some(answer) = &reply.body
        && let Err(err) = compiled.validate(route.op, reply.status.as_str(), answer)
    {
        inner.lock().violations.push(format!(
            "response {} to {what} ({}): {err}",
            reply.status.as_u16(),
            route.op
        ));
    }
    respond(reply)
}

fn respond(reply: Reply) -> Response {
    let mut response = match reply.body {
        Some(body) => (
            reply.status,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            Body::from(body.to_string()),
        )
            .into_response(),
        None => reply.status.into_response(),
    };
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

fn authorized(kind: ForgeKind, headers: &HeaderMap, token: &str) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = get("authorization").is_some_and(|value| {
        let given = match kind {
            ForgeKind::Gitlab => value.strip_prefix("Bearer "),
            ForgeKind::Github | ForgeKind::Gitea | ForgeKind::Local => value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("token ")),
        };
        given.is_some_and(|t| t.trim() == token)
    });
    let private = kind == ForgeKind::Gitlab && get("private-token").is_some_and(|t| t == token);
    bearer || private
}

fn not_found(kind: ForgeKind) -> Reply {
    Reply::json(
        StatusCode::NOT_FOUND,
        match kind {
            ForgeKind::Gitlab => json!({"message": "404 Not found"}),
            ForgeKind::Gitea => json!({"message": "The target couldn't be found.", "errors": []}),
            ForgeKind::Github | ForgeKind::Local => json!({
                "message": "Not Found",
                "documentation_url": "https://docs.github.com/rest"
            }),
        },
    )
}

fn unauthorized(kind: ForgeKind, web_url: &str) -> Reply {
    Reply::json(
        StatusCode::UNAUTHORIZED,
        match kind {
            ForgeKind::Gitlab => json!({"message": "401 Unauthorized"}),
            ForgeKind::Gitea => json!({
                "message": "token is required",
                "url": format!("{web_url}/api/swagger")
            }),
            ForgeKind::Github | ForgeKind::Local => json!({
                "message": "Bad credentials",
                "documentation_url": "https://docs.github.com/rest"
            }),
        },
    )
}

fn validation_failed(kind: ForgeKind, message: &str) -> Reply {
    Reply::json(
        StatusCode::UNPROCESSABLE_ENTITY,
        match kind {
            ForgeKind::Gitlab => json!({"message": message}),
            ForgeKind::Gitea => json!({"message": message, "url": ""}),
            ForgeKind::Github | ForgeKind::Local => json!({
                "message": "Validation Failed",
                "errors": [{"code": "invalid", "message": message}],
                "documentation_url": "https://docs.github.com/rest"
            }),
        },
    )
}

/// Runs the action. Only the branch listing awaits (git), with no lock held.
async fn execute(inner: &Inner, route: &Route, query: &str, path: &str, body: &Value) -> Reply {
    let kind = inner.kind;
    let ctx = Ctx {
        kind,
        api: inner.api_url(),
        web: inner.web_url(),
    };
    if route.action == Action::Users {
        let username = query_param(query, "username").unwrap_or_default();
        let mut state = inner.lock();
        let known = state.users.contains_key(&username.to_ascii_lowercase());
        let users = if known {
            let id = state.user_id(&username);
            vec![gitlab_user(&ctx, id, &username)]
        } else {
            Vec::new()
        };
        return Reply::json(StatusCode::OK, Value::Array(users));
    }
    let Some(repo_name) = route.repo.as_deref() else {
        return not_found(kind);
    };
    if route.action == Action::Branches {
        let found = {
            let state = inner.lock();
            state
                .repo(repo_name)
                .map(|r| (r.git_dir.clone(), r.default_branch.clone(), r.name.clone()))
        };
        let Some((git_dir, default_branch, name)) = found else {
            return not_found(kind);
        };
        return match git::branches(&git_dir).await {
            Ok(branches) => {
                let items = branches
                    .iter()
                    .map(|(branch, sha)| ctx.branch(&name, branch, sha, *branch == default_branch))
                    .collect();
                let max = inner.lock().max_per_page;
                paginate(&ctx, items, query, path, max)
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot list branches");
                Reply::json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"message": err.to_string()}),
                )
            }
        };
    }
    let mut state = inner.lock();
    let max = state.max_per_page;
    if state.repo(repo_name).is_none() {
        return not_found(kind);
    }
    match &route.action {
        Action::Repository => {
            let Some(repo) = state.repo(repo_name) else {
                return not_found(kind);
            };
            Reply::json(StatusCode::OK, ctx.repository(repo))
        }
        Action::ListHooks => {
            let Some(repo) = state.repo(repo_name) else {
                return not_found(kind);
            };
            let items = repo.hooks.values().map(|h| ctx.hook(repo, h)).collect();
            paginate(&ctx, items, query, path, max)
        }
        Action::GetHook(id) => {
            let Some(repo) = state.repo(repo_name) else {
                return not_found(kind);
            };
            match repo.hooks.get(id) {
                Some(hook) => Reply::json(StatusCode::OK, ctx.hook(repo, hook)),
                None => not_found(kind),
            }
        }
        Action::CreateHook => {
            state.next_hook_id += 1;
            let id = state.next_hook_id;
            let mut hook = FakeHook {
                id,
                url: String::new(),
                events: Vec::new(),
                active: true,
                content_type: if kind == ForgeKind::Github {
                    "form".to_owned()
                } else {
                    "json".to_owned()
                },
                secret: None,
            };
            apply_hook_body(kind, &mut hook, body, true);
            let Some(repo) = state.repo_mut(repo_name) else {
                return not_found(kind);
            };
            repo.hooks.insert(id, hook.clone());
            Reply::json(StatusCode::CREATED, ctx.hook(repo, &hook))
        }
        Action::UpdateHook(id) => {
            let Some(repo) = state.repo_mut(repo_name) else {
                return not_found(kind);
            };
            let Some(hook) = repo.hooks.get_mut(id) else {
                return not_found(kind);
            };
            apply_hook_body(kind, hook, body, false);
            let hook = hook.clone();
            Reply::json(StatusCode::OK, ctx.hook(repo, &hook))
        }
        Action::DeleteHook(id) => {
            let Some(repo) = state.repo_mut(repo_name) else {
                return not_found(kind);
            };
            match repo.hooks.remove(id) {
                Some(_) => Reply::empty(StatusCode::NO_CONTENT),
                None => not_found(kind),
            }
        }
        Action::Pulls => {
            let Some(repo) = state.repo(repo_name) else {
                return not_found(kind);
            };
            let items = repo
                .prs
                .values()
                .filter(|p| p.open)
                .map(|p| {
                    let author_id = state.users.get(&p.pr.author.to_ascii_lowercase());
                    ctx.pull(repo, &p.pr, author_id.copied().unwrap_or(1))
                })
                .collect();
            paginate(&ctx, items, query, path, max)
        }
        Action::Permission(user) => {
            let user_id = state.user_id(user);
            let Some(repo) = state.repo(repo_name) else {
                return not_found(kind);
            };
            Reply::json(
                StatusCode::OK,
                ctx.permission(repo.permission(user), user, user_id),
            )
        }
        Action::Member(user_id) => {
            let Some(login) = state
                .users
                .iter()
                .find(|(_, id)| *id == user_id)
                .map(|(login, _)| login.clone())
            else {
                return not_found(kind);
            };
            let Some(repo) = state.repo(repo_name) else {
                return not_found(kind);
            };
            let level = match repo.permission(&login) {
                FakePermission::None => return not_found(kind),
                FakePermission::Read => 20,
                FakePermission::Write => 30,
                FakePermission::Admin => 50,
            };
            let mut member = gitlab_user(&ctx, *user_id, &login);
            member["access_level"] = json!(level);
            member["created_at"] = json!(TIMESTAMP);
            member["expires_at"] = Value::Null;
            Reply::json(StatusCode::OK, member)
        }
        Action::CreateStatus(sha) => {
            state.next_status_id += 1;
            let id = state.next_status_id;
            let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
            let status = FakeStatus {
                context: text("context")
                    .or_else(|| text("name"))
                    .unwrap_or_else(|| "default".to_owned()),
                state: text("state").unwrap_or_default(),
                description: text("description"),
                target_url: text("target_url"),
            };
            let Some(repo) = state.repo_mut(repo_name) else {
                return not_found(kind);
            };
            repo.statuses.push((sha.clone(), status.clone()));
            Reply::json(StatusCode::CREATED, ctx.status(repo, id, sha, &status))
        }
        Action::CreateCheckRun => {
            state.next_check_run_id += 1;
            let id = state.next_check_run_id;
            let mut run = FakeCheckRun {
                id,
                name: String::new(),
                head_sha: String::new(),
                status: "queued".to_owned(),
                conclusion: None,
                details_url: None,
                output_title: None,
                output_summary: None,
                updates: 0,
            };
            apply_check_run_body(&mut run, body);
            let Some(repo) = state.repo_mut(repo_name) else {
                return not_found(kind);
            };
            repo.check_runs.insert(id, run.clone());
            Reply::json(StatusCode::CREATED, ctx.check_run(repo, &run))
        }
        Action::GetCheckRun(id) => {
            let Some(repo) = state.repo(repo_name) else {
                return not_found(kind);
            };
            match repo.check_runs.get(id) {
                Some(run) => Reply::json(StatusCode::OK, ctx.check_run(repo, run)),
                None => not_found(kind),
            }
        }
        Action::UpdateCheckRun(id) => {
            let Some(repo) = state.repo_mut(repo_name) else {
                return not_found(kind);
            };
            let Some(run) = repo.check_runs.get_mut(id) else {
                return not_found(kind);
            };
            apply_check_run_body(run, body);
            run.updates += 1;
            let run = run.clone();
            Reply::json(StatusCode::OK, ctx.check_run(repo, &run))
        }
        Action::Branches | Action::Users => not_found(kind),
    }
}

/// Applies a hook create/update body in the forge's shape to a stored hook.
fn apply_hook_body(kind: ForgeKind, hook: &mut FakeHook, body: &Value, create: bool) {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    if kind == ForgeKind::Gitlab {
        if let Some(url) = text(body, "url") {
            // GitLab drops the token when the URL changes and no new one is given.
            if url != hook.url && !create {
                hook.secret = None;
            }
            hook.url = url;
        }
        if let Some(token) = text(body, "token") {
            hook.secret = (!token.is_empty()).then_some(token);
        }
        let flag = |key: &str| body.get(key).and_then(Value::as_bool);
        let mut events = Vec::new();
        let push = flag("push_events").unwrap_or(if create {
            true
        } else {
            hook.events.iter().any(|e| e == "push")
        });
        let mr = flag("merge_requests_events").unwrap_or(if create {
            false
        } else {
            hook.events.iter().any(|e| e == "pull_request")
        });
        if push {
            events.push("push".to_owned());
        }
        if mr {
            events.push("pull_request".to_owned());
        }
        hook.events = events;
        hook.active = true;
        hook.content_type = "json".to_owned();
        return;
    }
    if let Some(active) = body.get("active").and_then(Value::as_bool) {
        hook.active = active;
    } else if create && kind == ForgeKind::Gitea {
        // Gitea's `active` defaults to false.
        hook.active = false;
    }
    if let Some(events) = body.get("events").and_then(Value::as_array) {
        let mut names: Vec<String> = Vec::new();
        for event in events.iter().filter_map(Value::as_str) {
            let name = if kind == ForgeKind::Gitea && event.starts_with("pull_request") {
                "pull_request"
            } else {
                event
            };
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
        hook.events = names;
    } else if create {
        hook.events = vec!["push".to_owned()];
    }
    if let Some(config) = body.get("config") {
        if let Some(url) = text(config, "url") {
            hook.url = url;
        }
        if let Some(content_type) = text(config, "content_type") {
            hook.content_type = content_type;
        }
        if let Some(secret) = text(config, "secret") {
            hook.secret = (!secret.is_empty()).then_some(secret);
        }
    }
}

fn apply_check_run_body(run: &mut FakeCheckRun, body: &Value) {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    if let Some(name) = text(body, "name") {
        run.name = name;
    }
    if let Some(sha) = text(body, "head_sha") {
        run.head_sha = sha;
    }
    if let Some(status) = text(body, "status") {
        run.status = status;
    }
    if let Some(conclusion) = text(body, "conclusion") {
        run.conclusion = Some(conclusion);
        run.status = "completed".to_owned();
    }
    if let Some(url) = text(body, "details_url") {
        run.details_url = Some(url);
    }
    if let Some(output) = body.get("output") {
        if let Some(title) = text(output, "title") {
            run.output_title = Some(title);
        }
        if let Some(summary) = text(output, "summary") {
            run.output_summary = Some(summary);
        }
    }
}

/// The page size parameter, default and maximum of each forge.
fn page_size(kind: ForgeKind, query: &str, max: usize) -> usize {
    let (param, default, cap) = match kind {
        ForgeKind::Gitlab => ("per_page", 20, 100),
        ForgeKind::Gitea => ("limit", 30, 50),
        ForgeKind::Github | ForgeKind::Local => ("per_page", 30, 100),
    };
    query_param(query, param)
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
        .min(cap)
        .min(max)
}

/// Cuts one page out of `items` and adds the forge's pagination headers.
fn paginate(ctx: &Ctx, items: Vec<Value>, query: &str, path: &str, max: usize) -> Reply {
    let size = page_size(ctx.kind, query, max);
    let page = query_param(query, "page")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    let total = items.len();
    let pages = total.div_ceil(size).max(1);
    let chunk: Vec<Value> = items
        .into_iter()
        .skip((page - 1).saturating_mul(size))
        .take(size)
        .collect();
    let link_to = |n: usize| {
        let mut params: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("page="))
            .map(str::to_owned)
            .collect();
        params.push(format!("page={n}"));
        format!("{}{path}?{}", ctx.web, params.join("&"))
    };
    let mut links = Vec::new();
    if page < pages {
        links.push(format!("<{}>; rel=\"next\"", link_to(page + 1)));
        links.push(format!("<{}>; rel=\"last\"", link_to(pages)));
    }
    if page > 1 {
        links.push(format!("<{}>; rel=\"first\"", link_to(1)));
        links.push(format!("<{}>; rel=\"prev\"", link_to(page - 1)));
    }
    let mut reply = Reply::json(StatusCode::OK, Value::Array(chunk));
    if !links.is_empty() {
        reply.headers.push(("link", links.join(", ")));
    }
    match ctx.kind {
        ForgeKind::Gitlab => {
            let next = if page < pages {
                (page + 1).to_string()
            } else {
                String::new()
            };
            let prev = if page > 1 {
                (page - 1).to_string()
            } else {
                String::new()
            };
            reply.headers.extend([
                ("x-next-page", next),
                ("x-page", page.to_string()),
                ("x-per-page", size.to_string()),
                ("x-prev-page", prev),
                ("x-total", total.to_string()),
                ("x-total-pages", pages.to_string()),
            ]);
        }
        ForgeKind::Gitea => reply.headers.push(("x-total-count", total.to_string())),
        ForgeKind::Github | ForgeKind::Local => {}
    }
    reply
}
