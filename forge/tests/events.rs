//! Every copied payload parsed into the normalised event, asserted field by field through its
//! JSON form, plus the action mapping of each forge on variants of the real payloads.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: allow-unwrap/panic-in-tests covers only #[test] fns"
)]

use std::path::{Path, PathBuf};

use reconix_forge::{Error, ErrorClass, Headers, parse};
use reconix_spec::ForgeKind;
use serde_json::{Value, json};

fn fixture(path: &str) -> Vec<u8> {
    let full: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Parses `body` as a delivery of `event` (in that forge's event header) and returns its JSON.
fn normalise(kind: ForgeKind, event: &str, body: &[u8]) -> Value {
    let header = match kind {
        ForgeKind::Github => "X-GitHub-Event",
        ForgeKind::Gitlab => "X-Gitlab-Event",
        ForgeKind::Gitea | ForgeKind::Local => "X-Gitea-Event",
    };
    let event = parse(kind, &Headers::new().with(header, event), body).unwrap();
    serde_json::to_value(event).unwrap()
}

fn edit(path: &str, change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&fixture(path)).unwrap();
    change(&mut value);
    serde_json::to_vec(&value).unwrap()
}

#[test]
fn github_push_should_normalise_a_branch_push() {
    let event = normalise(ForgeKind::Github, "push", &fixture("github/push.json"));
    assert_eq!(
        event,
        json!({
            "kind": "push",
            "repo": "baxterthehacker/public-repo",
            "ref": "refs/heads/changes",
            "before": "9049f1265b7d61be4a8904a9a27120d2064dab3b",
            "after": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
            "created": false,
            "deleted": false,
            "forced": false,
            "tag": false,
            "delivery": null,
        })
    );
}

#[test]
fn github_push_should_normalise_a_new_branch() {
    let event = normalise(
        ForgeKind::Github,
        "push",
        &fixture("github/push.new-branch.json"),
    );
    assert_eq!(
        event,
        json!({
            "kind": "push",
            "repo": "Codertocat/Hello-World",
            "ref": "refs/heads/master",
            "before": "0000000000000000000000000000000000000000",
            "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
            "created": true,
            "deleted": false,
            "forced": false,
            "tag": false,
            "delivery": null,
        })
    );
}

#[test]
fn github_push_should_mark_a_deletion_a_tag_and_a_force_push() {
    let body = edit("github/push.json", |v| {
        v["ref"] = json!("refs/tags/v1");
        v["after"] = json!("0000000000000000000000000000000000000000");
        v["deleted"] = json!(true);
        v["forced"] = json!(true);
    });
    let event = normalise(ForgeKind::Github, "push", &body);
    assert_eq!(event["deleted"], json!(true));
    assert_eq!(event["tag"], json!(true));
    assert_eq!(event["forced"], json!(true));
}

fn github_pr(action: &str) -> Value {
    json!({
        "kind": "pull_request",
        "repo": "Codertocat/Hello-World",
        "number": 2,
        "action": action,
        "head_sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
        "head_ref": "changes",
        "base_ref": "master",
        "author": "Codertocat",
        "from_fork": false,
        "delivery": null,
    })
}

#[test]
fn github_pull_request_should_normalise_opened_synchronize_and_closed() {
    for (file, action) in [
        ("github/pull_request.opened.json", "opened"),
        ("github/pull_request.synchronize.json", "updated"),
        ("github/pull_request.closed.json", "closed"),
    ] {
        let event = normalise(ForgeKind::Github, "pull_request", &fixture(file));
        assert_eq!(event, github_pr(action), "{file}");
    }
}

#[test]
fn github_pull_request_should_map_merged_edited_reopened_and_forks() {
    let closed = "github/pull_request.closed.json";
    let merged = edit(closed, |v| v["pull_request"]["merged"] = json!(true));
    assert_eq!(
        normalise(ForgeKind::Github, "pull_request", &merged)["action"],
        "merged"
    );
    for (raw, action) in [("edited", "edited"), ("reopened", "reopened")] {
        let body = edit(closed, |v| v["action"] = json!(raw));
        assert_eq!(
            normalise(ForgeKind::Github, "pull_request", &body)["action"],
            action
        );
    }
    let fork = edit("github/pull_request.opened.json", |v| {
        v["pull_request"]["head"]["repo"]["full_name"] = json!("mallory/Hello-World");
    });
    assert_eq!(
        normalise(ForgeKind::Github, "pull_request", &fork)["from_fork"],
        true
    );
    let gone = edit("github/pull_request.opened.json", |v| {
        v["pull_request"]["head"]["repo"] = Value::Null;
    });
    assert_eq!(
        normalise(ForgeKind::Github, "pull_request", &gone)["from_fork"],
        Value::Null
    );
}

#[test]
fn github_pull_request_should_ignore_actions_that_change_no_code() {
    let body = edit("github/pull_request.opened.json", |v| {
        v["action"] = json!("labeled")
    });
    assert_eq!(
        normalise(ForgeKind::Github, "pull_request", &body),
        json!({
            "kind": "ignored",
            "event": "pull_request",
            "action": "labeled",
            "repo": "Codertocat/Hello-World",
            "delivery": null,
        })
    );
}

#[test]
fn github_ping_should_normalise_both_examples() {
    for file in ["github/ping.json", "github/ping.with-app_id.json"] {
        let event = normalise(ForgeKind::Github, "ping", &fixture(file));
        assert_eq!(
            event,
            json!({
                "kind": "ping",
                "hook_id": 109_948_940,
                "repo": "Octocoders/Hello-World",
                "delivery": null,
            }),
            "{file}"
        );
    }
}

#[test]
fn github_installation_should_be_ignored() {
    let event = normalise(
        ForgeKind::Github,
        "installation",
        &fixture("github/installation.created.json"),
    );
    assert_eq!(
        event,
        json!({
            "kind": "ignored",
            "event": "installation",
            "action": null,
            "repo": null,
            "delivery": null,
        })
    );
}

#[test]
fn github_should_carry_the_delivery_id() {
    let headers = Headers::new()
        .with("x-github-event", "push")
        .with("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    let event = parse(ForgeKind::Github, &headers, &fixture("github/push.json")).unwrap();
    assert_eq!(
        event.delivery.as_deref(),
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );
}

#[test]
fn gitlab_push_hook_should_normalise_with_unknown_fields_null() {
    let event = normalise(
        ForgeKind::Gitlab,
        "Push Hook",
        &fixture("gitlab/push_hook.json"),
    );
    assert_eq!(
        event,
        json!({
            "kind": "push",
            "repo": "mike/diaspora",
            "ref": "refs/heads/master",
            "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
            "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
            "created": false,
            "deleted": false,
            "forced": null,
            "tag": false,
            "delivery": null,
        })
    );
}

#[test]
fn gitlab_tag_push_hook_should_be_a_push_of_a_tag() {
    let body = edit("gitlab/push_hook.json", |v| {
        v["object_kind"] = json!("tag_push");
        v["ref"] = json!("refs/tags/v1.0.0");
        v["before"] = json!("0000000000000000000000000000000000000000");
    });
    let event = normalise(ForgeKind::Gitlab, "Tag Push Hook", &body);
    assert_eq!(event["kind"], "push");
    assert_eq!(event["tag"], true);
    assert_eq!(event["created"], true);
}

#[test]
fn gitlab_merge_request_hook_should_normalise_an_opened_request() {
    let event = normalise(
        ForgeKind::Gitlab,
        "Merge Request Hook",
        &fixture("gitlab/merge_request_hook.json"),
    );
    assert_eq!(
        event,
        json!({
            "kind": "pull_request",
            "repo": "gitlabhq/gitlab-test",
            "number": 1,
            "action": "opened",
            "head_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
            "head_ref": "ms-viewport",
            "base_ref": "master",
            "author": null,
            "from_fork": false,
            "delivery": null,
        })
    );
}

#[test]
fn gitlab_merge_request_hook_should_map_every_action() {
    let file = "gitlab/merge_request_hook.json";
    let oldrev = json!("95790bf891e76fee5e1747ab589903a6a1f80f22");
    for (raw, oldrev, action) in [
        ("update", oldrev.clone(), "updated"),
        ("update", Value::Null, "edited"),
        ("reopen", Value::Null, "reopened"),
        ("close", Value::Null, "closed"),
        ("merge", Value::Null, "merged"),
    ] {
        let body = edit(file, |v| {
            v["object_attributes"]["action"] = json!(raw);
            v["object_attributes"]["oldrev"] = oldrev;
        });
        let event = normalise(ForgeKind::Gitlab, "Merge Request Hook", &body);
        assert_eq!(event["action"], action, "{raw}");
    }
    let approved = edit(file, |v| {
        v["object_attributes"]["action"] = json!("approved")
    });
    let event = normalise(ForgeKind::Gitlab, "Merge Request Hook", &approved);
    assert_eq!(event["kind"], "ignored");
    assert_eq!(event["action"], "approved");
    let fork = edit(file, |v| {
        v["object_attributes"]["source_project_id"] = json!(15)
    });
    assert_eq!(
        normalise(ForgeKind::Gitlab, "Merge Request Hook", &fork)["from_fork"],
        true
    );
}

#[test]
fn gitlab_should_prefer_the_idempotency_key_as_delivery_id() {
    let body = fixture("gitlab/push_hook.json");
    let base = Headers::new().with("X-Gitlab-Event", "Push Hook").with(
        "X-Gitlab-Event-UUID",
        "9cebe914-4827-408f-b014-cfa23a47a35f",
    );
    let event = parse(ForgeKind::Gitlab, &base, &body).unwrap();
    assert_eq!(
        event.delivery.as_deref(),
        Some("9cebe914-4827-408f-b014-cfa23a47a35f")
    );
    let keyed = base.with("Idempotency-Key", "3a427872-00df-429c-9bc9-a9475de2efe4");
    let event = parse(ForgeKind::Gitlab, &keyed, &body).unwrap();
    assert_eq!(
        event.delivery.as_deref(),
        Some("3a427872-00df-429c-9bc9-a9475de2efe4")
    );
}

#[test]
fn gitlab_other_hooks_should_be_ignored() {
    let event = normalise(
        ForgeKind::Gitlab,
        "Pipeline Hook",
        &fixture("gitlab/push_hook.json"),
    );
    assert_eq!(event["kind"], "ignored");
    assert_eq!(event["event"], "Pipeline Hook");
}

#[test]
fn gitea_push_should_normalise_the_documented_example() {
    let headers = Headers::new()
        .with("X-Gitea-Event", "push")
        .with("X-Gitea-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473");
    let event = parse(
        ForgeKind::Gitea,
        &headers,
        &fixture("gitea/push.gitea-docs.json"),
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(event).unwrap(),
        json!({
            "kind": "push",
            "repo": "gitea/webhooks",
            "ref": "refs/heads/develop",
            "before": "28e1879d029cb852e4844d9c718537df08844e03",
            "after": "bffeb74224043ba2feb48d137756c8a9331c449a",
            "created": false,
            "deleted": false,
            "forced": null,
            "tag": false,
            "delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead473",
        })
    );
}

#[test]
fn gitea_should_accept_the_forgejo_event_header() {
    let headers = Headers::new()
        .with("x-forgejo-event", "push")
        .with("X-Forgejo-Delivery", "d1");
    let event = parse(
        ForgeKind::Gitea,
        &headers,
        &fixture("gitea/push.gitea-docs.json"),
    )
    .unwrap();
    assert_eq!(event.repo.as_deref(), Some("gitea/webhooks"));
    assert_eq!(event.delivery.as_deref(), Some("d1"));
}

#[test]
fn malformed_json_should_be_a_payload_error_for_every_forge() {
    for (kind, header, event) in [
        (ForgeKind::Github, "X-GitHub-Event", "push"),
        (ForgeKind::Github, "X-GitHub-Event", "installation"),
        (ForgeKind::Gitlab, "X-Gitlab-Event", "Merge Request Hook"),
        (ForgeKind::Gitea, "X-Gitea-Event", "push"),
    ] {
        let err = parse(kind, &Headers::new().with(header, event), b"{\"ref\": ").unwrap_err();
        assert!(
            matches!(err, Error::MalformedPayload { .. }),
            "{kind:?} {event}"
        );
        assert_eq!(err.class(), ErrorClass::Payload);
    }
}

#[test]
fn a_known_event_without_a_required_field_should_be_a_payload_error() {
    let no_ref = edit("github/push.json", |v| {
        v.as_object_mut().map(|m| m.remove("ref"));
    });
    let err = parse(
        ForgeKind::Github,
        &Headers::new().with("X-GitHub-Event", "push"),
        &no_ref,
    )
    .unwrap_err();
    assert!(matches!(err, Error::MalformedPayload { .. }));
    // A push payload delivered as a merge request lacks `object_attributes`.
    let err = parse(
        ForgeKind::Gitlab,
        &Headers::new().with("X-Gitlab-Event", "Merge Request Hook"),
        &fixture("gitlab/push_hook.json"),
    )
    .unwrap_err();
    assert!(matches!(err, Error::MalformedPayload { .. }));
}

#[test]
fn a_missing_event_header_should_be_a_payload_error() {
    let err = parse(
        ForgeKind::Gitea,
        &Headers::new(),
        &fixture("gitea/push.gitea-docs.json"),
    )
    .unwrap_err();
    assert!(matches!(err, Error::MissingEventHeader { .. }));
    assert_eq!(err.class(), ErrorClass::Payload);
}

#[test]
fn a_head_sha_that_is_not_a_commit_id_should_be_an_invalid_field() {
    let body = edit("github/pull_request.opened.json", |v| {
        v["pull_request"]["head"]["sha"] = json!("changes");
    });
    let headers = Headers::new().with("X-GitHub-Event", "pull_request");
    let err = parse(ForgeKind::Github, &headers, &body).unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidField {
            field: "pull_request.head.sha",
            ..
        }
    ));
    assert_eq!(err.class(), ErrorClass::Payload);
}
