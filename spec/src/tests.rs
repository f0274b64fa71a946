//! Tests of reading specs: valid fixtures, and one test per validation error with its location.

use std::path::{Path, PathBuf};

use crate::*;

const FILE: &str = "/etc/reconix/spec.yaml";

const MINIMAL: &str = "\
state-dir: /var/lib/reconix
listen: 127.0.0.1:8080
forges:
  here:
    kind: local
    poll-interval: 5s
    repos:
      demo:
        path: /srv/demo
        branches: [main]
";

/// A valid spec with a hosted forge, used as the base of error fixtures.
const GITHUB: &str = "\
external-url: https://ci.example.org
forges:
  gh:
    kind: github
    token-file: /run/secrets/gh-token
    webhook-secret-file: /run/secrets/gh-webhook
    repos:
      acme/widgets:
        branches: [main, release/*]
";

fn spec(text: &str) -> Spec {
    parse(text, Path::new(FILE)).unwrap_or_else(|e| panic!("spec rejected:\n{e}"))
}

/// Returns every error as `LINE:COL: message`.
fn errors(text: &str) -> Vec<String> {
    let errors = parse(text, Path::new(FILE)).expect_err("spec accepted");
    errors
        .iter()
        .map(|e| format!("{}:{}: {}", e.line, e.col, e.message))
        .collect()
}

/// Asserts that `text` has exactly one error, at `position`, whose message contains `needle`.
#[track_caller]
fn assert_error(text: &str, position: &str, needle: &str) {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let prefix = format!("{position}: ");
    assert!(
        errors[0].starts_with(&prefix) && errors[0].contains(needle),
        "expected `{position}: …{needle}…`, got {errors:#?}"
    );
}

#[test]
fn minimal_spec_should_be_valid() {
    let spec = spec(MINIMAL);
    let forge = &spec.forges[&ForgeName::new("here").unwrap()];
    assert_eq!(forge.kind, ForgeKind::Local);
    assert_eq!(forge.poll_interval, Duration::from_secs(5));
    let (key, _, repo) = spec.repos().next().unwrap();
    assert_eq!(key.to_string(), "here/demo");
    assert_eq!(repo.path.as_deref(), Some(Path::new("/srv/demo")));
    assert_eq!(repo.branches, ["main"]);
    assert!(repo.matches_branch("main"));
}

#[test]
fn omitted_keys_should_take_their_defaults() {
    let spec = spec(
        "forges:\n  here:\n    kind: local\n    repos:\n      demo:\n        path: /srv/demo\n",
    );
    assert_eq!(spec.state_dir, Path::new("/var/lib/reconix"));
    assert_eq!(spec.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(spec.external_url, None);
    let (_, forge, repo) = spec.repos().next().unwrap();
    assert_eq!(forge.poll_interval, Duration::from_secs(30));
    assert!(repo.follows_default_branch());
    assert!(repo.pull_requests);
    assert_eq!(repo.systems, [System::x86_64_linux()]);
    assert_eq!(repo.attributes, AttrKind::ALL.map(AttrKind::path));
    assert_eq!(repo.timeout, Duration::from_secs(3 * 3600));
    assert_eq!(repo.max_silent, Duration::from_secs(3600));
    assert_eq!(spec.builders.local.max_jobs, 2);
    assert!(spec.builders.remote.is_empty() && spec.caches.is_empty());
    assert_eq!(spec.retention.max_age, Duration::from_days(30));
    assert_eq!(spec.retention.logs, Duration::from_days(90));
    assert_eq!(spec.retention.keep_last, 3);
    assert_eq!(spec.statuses.collapse_threshold, 50);
    assert_eq!(spec.statuses.debounce, Duration::from_secs(10));
    assert_eq!(spec.statuses.context_prefix, "reconix");
}

#[test]
fn full_spec_should_parse_every_section() {
    let text = format!(
        "{GITHUB}\
builders:
  local: {{max-jobs: 0}}
  enrollment:
    listen: 0.0.0.0:7070
    token-file: secrets/enroll
  remote:
    arm:
      systems: [aarch64-linux]
      features: [kvm]
caches:
  - push-url: s3://nix-cache?region=eu-west-1
    public-url: https://cache.example.org
    public-key: cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=
    signing-key-file: /run/secrets/cache-key
    s3-credentials-file: /run/secrets/s3
    repos: [gh/acme/widgets]
retention:
  max-age: 30 days
  max-size: 50 GiB
  keep-last: 5
  logs: 1 hour 30 min
statuses:
  context-prefix: ci
"
    );
    let spec = spec(&text);
    let enrollment = spec.builders.enrollment.as_ref().unwrap();
    assert_eq!(
        enrollment.token_file.path(),
        Path::new("/etc/reconix/secrets/enroll")
    );
    assert_eq!(
        spec.builders.remote[&BuilderName::new("arm").unwrap()].max_jobs,
        1
    );
    assert_eq!(spec.retention.max_size, Some(ByteSize(50 << 30)));
    assert_eq!(spec.retention.max_age, Duration::from_days(30));
    assert_eq!(spec.retention.logs, Duration::from_secs(5400));
    let key = RepoKey::parse("gh/acme/widgets").unwrap();
    assert_eq!(spec.caches_for(&key).count(), 1);
    assert_eq!(spec.caches[0].kind(), Some(CacheKind::S3));
    assert_eq!(
        spec.caches[0].substituter_url(),
        "https://cache.example.org"
    );
}

#[test]
fn spec_should_round_trip_through_yaml() {
    let spec = spec(MINIMAL);
    let text = serde_yaml::to_string(&spec).unwrap();
    assert_eq!(parse(&text, Path::new(FILE)).unwrap(), spec);
}

#[test]
fn accessors_should_find_repos_by_key() {
    let spec = spec(GITHUB);
    let key = RepoKey::parse("gh/acme/widgets").unwrap();
    let (forge, repo) = spec.repo(&key).unwrap();
    assert_eq!(forge.kind, ForgeKind::Github);
    assert!(repo.matches_branch("release/2.0"));
    assert!(
        spec.repo(&RepoKey::parse("gh/acme/other").unwrap())
            .is_none()
    );
    assert!(
        spec.repo(&RepoKey::parse("gl/acme/widgets").unwrap())
            .is_none()
    );
    let keys: Vec<String> = spec.repos().map(|(k, _, _)| k.to_string()).collect();
    assert_eq!(keys, ["gh/acme/widgets"]);
}

#[test]
fn hosted_repos_and_forges_should_leave_local_checkouts_out() {
    let both = format!(
        "{GITHUB}  here:\n    kind: local\n    repos:\n      demo:\n        path: /srv/demo\n"
    );
    let spec = spec(&both);
    assert_eq!(spec.repos().count(), 2);
    let hosted: Vec<String> = spec.hosted_repos().map(|(k, _, _)| k.to_string()).collect();
    assert_eq!(hosted, ["gh/acme/widgets"]);
    let forges: Vec<&str> = spec.hosted_forges().map(|f| f.as_str()).collect();
    assert_eq!(forges, ["gh"]);
}

#[test]
fn errors_should_display_as_file_line_col_message() {
    let err = parse("listen: nope\n", Path::new("spec.yaml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec.yaml:1:9: listen: invalid socket address syntax"
    );
}

#[test]
fn unknown_key_should_be_located() {
    assert_error(
        MINIMAL
            .replace("    poll-interval", "    pol-interval")
            .as_str(),
        "6:5",
        "unknown field `pol-interval`",
    );
}

#[test]
fn inline_secret_should_hint_at_the_file_key() {
    let text = GITHUB.replace("token-file: /run/secrets/gh-token", "token: ghp_123");
    assert_error(&text, "5:5", "secrets are given as files: use `token-file`");
    let text = GITHUB.replace("webhook-secret-file:", "webhook-secret:");
    assert_error(&text, "6:5", "use `webhook-secret-file`");
}

#[test]
fn yaml_syntax_error_should_be_located() {
    assert_error(
        "forges: [here\nlisten: x\n",
        "2:7",
        "did not find expected ',' or ']'",
    );
}

#[test]
fn type_error_should_be_located() {
    assert_error(&MINIMAL.replace("5s", "5"), "6:20", "invalid duration `5`");
    assert_error(
        &MINIMAL.replace("local", "lokal"),
        "5:11",
        "unknown variant `lokal`",
    );
}

#[test]
fn duplicate_yaml_keys_should_be_errors() {
    let text = format!("{MINIMAL}  here:\n    kind: local\n");
    assert_error(
        &text,
        "11:3",
        "duplicate key `here` (first given at line 4)",
    );
    let text = MINIMAL.replace("    kind: local\n", "    kind: local\n    kind: local\n");
    assert_error(&text, "6:5", "duplicate key `kind`");
}

#[test]
fn unknown_forge_in_a_repo_reference_should_be_an_error() {
    let text = format!(
        "{MINIMAL}caches:
  - push-url: file:///srv/cache
    public-key: k-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=
    signing-key-file: /run/key
    repos: [here/demo, x/y]
"
    );
    assert_error(&text, "15:24", "unknown forge `x` in repo reference `x/y`");
}

#[test]
fn unknown_repo_in_a_repo_reference_should_be_an_error() {
    let text = format!(
        "{MINIMAL}caches:
  - push-url: file:///srv/cache
    public-key: k-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=
    signing-key-file: /run/key
    repos:
      - here/nope
"
    );
    assert_error(&text, "16:9", "unknown repo `nope` in forge `here`");
}

#[test]
fn two_local_repos_with_one_path_should_be_an_error() {
    let text = format!("{MINIMAL}      again:\n        path: /srv/demo/\n");
    // `again` sorts before `demo`, so `demo` is the second one seen.
    assert_error(
        &text,
        "9:9",
        "path `/srv/demo` is also the checkout of repo `here/again`",
    );
}

#[test]
fn one_repo_under_two_forges_of_the_same_server_should_be_an_error() {
    let text = format!(
        "{GITHUB}  gh2:
    kind: github
    api-url: https://api.github.com/
    token-file: /run/secrets/gh-token
    webhook-secret-file: /run/secrets/gh-webhook
    repos:
      acme/widgets: {{}}
"
    );
    assert_error(
        &text,
        "16:7",
        "repo `gh2/acme/widgets` is the same repository as `gh/acme/widgets`",
    );
}

#[test]
fn repo_names_differing_only_in_case_should_be_an_error_on_github() {
    let text = format!("{GITHUB}      Acme/Widgets: {{}}\n");
    // `Acme/Widgets` sorts first, so the later `acme/widgets` is reported.
    assert_error(
        &text,
        "8:7",
        "repo `acme/widgets` differs from `Acme/Widgets` only in case",
    );
}

#[test]
fn invalid_branch_glob_should_be_an_error() {
    assert_error(
        &MINIMAL.replace("[main]", "[main, 'rel[']"),
        "10:26",
        "is not a valid glob",
    );
}

#[test]
fn branch_glob_with_characters_git_forbids_should_be_an_error() {
    let text = MINIMAL.replace(
        "branches: [main]",
        "branches:\n          - main\n          - feature~1",
    );
    assert_error(&text, "12:13", "contains '~', which git forbids");
    assert_error(
        &MINIMAL.replace("[main]", "[a..b]"),
        "10:20",
        "contains `..`",
    );
    assert_error(
        &MINIMAL.replace("[main]", "['my branch']"),
        "10:20",
        "contains ' '",
    );
}

#[test]
fn cache_without_public_key_should_be_an_error() {
    let text = format!(
        "{MINIMAL}caches:\n  - push-url: file:///srv/cache\n    signing-key-file: /run/key\n"
    );
    assert_error(&text, "12:5", "cache `file:///srv/cache` has no public-key");
}

#[test]
fn malformed_public_key_should_be_an_error() {
    let text = format!(
        "{MINIMAL}caches:\n  - push-url: file:///srv/cache\n    public-key: abc\n    signing-key-file: /run/key\n"
    );
    assert_error(&text, "13:5", "must look like `name:base64`");
}

#[test]
fn cache_with_an_unsupported_push_url_scheme_should_be_an_error() {
    let text = format!(
        "{MINIMAL}caches:
  - signing-key-file: /run/key
    public-key: k-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=
    push-url: ssh://cache.example.org
"
    );
    assert_error(
        &text,
        "14:5",
        "push-url `ssh://cache.example.org` of cache 0 has an unsupported scheme",
    );
}

#[test]
fn hosted_forge_without_secret_files_should_be_an_error() {
    let text = GITHUB
        .replace("    token-file: /run/secrets/gh-token\n", "")
        .replace("    webhook-secret-file: /run/secrets/gh-webhook\n", "");
    assert_eq!(
        errors(&text),
        [
            "3:3: github forge `gh` needs a token-file",
            "3:3: github forge `gh` needs a webhook-secret-file",
        ]
    );
}

#[test]
fn local_repo_without_path_should_be_an_error() {
    let text = MINIMAL.replace("        path: /srv/demo\n", "");
    assert_error(
        &text,
        "8:7",
        "repo `here/demo` of local forge `here` needs a path",
    );
}

#[test]
fn relative_repo_path_should_resolve_against_the_spec_file_directory() {
    let spec = spec(&MINIMAL.replace("/srv/demo", "../demo"));
    let (_, _, repo) = spec.repos().next().unwrap();
    assert_eq!(
        repo.path.as_deref(),
        Some(Path::new("/etc/reconix/../demo"))
    );
}

#[test]
fn relative_repo_path_without_a_spec_directory_should_be_an_error() {
    let err = parse(
        &MINIMAL.replace("/srv/demo", "demo"),
        Path::new("spec.yaml"),
    )
    .unwrap_err();
    let [err] = err.as_slice() else {
        panic!("{err}")
    };
    assert_eq!((err.line, err.col), (9, 9));
    assert!(
        err.message
            .starts_with("path `demo` must be an absolute path"),
        "{err}"
    );
}

#[test]
fn repo_path_on_a_hosted_forge_should_be_an_error() {
    let text = GITHUB.replace("        branches", "        path: /srv/w\n        branches");
    assert_error(
        &text,
        "9:9",
        "path is only for local forges, and `gh` is a github forge",
    );
}

#[test]
fn hosted_repo_name_without_owner_should_be_an_error() {
    assert_error(
        &GITHUB.replace("acme/widgets", "widgets"),
        "8:7",
        "github repo names look like `owner/name`",
    );
}

#[test]
fn empty_systems_should_be_an_error() {
    let text = MINIMAL.replace("[main]", "[main]\n        systems: []");
    assert_error(&text, "11:9", "systems is empty");
    let text = format!("{MINIMAL}builders:\n  local:\n    systems: []\n");
    assert_error(&text, "13:5", "systems is empty");
}

#[test]
fn empty_attributes_should_be_an_error() {
    let text = MINIMAL.replace("[main]", "[main]\n        attributes: []");
    assert_error(&text, "11:9", "attributes is empty");
}

#[test]
fn zero_poll_interval_should_be_an_error() {
    assert_error(
        &MINIMAL.replace("5s", "0s"),
        "6:5",
        "poll-interval must be longer than zero",
    );
}

#[test]
fn reserved_builder_name_should_be_an_error() {
    let text = format!("{MINIMAL}builders:\n  remote:\n    local:\n      max-jobs: 4\n");
    assert_error(&text, "13:5", "builder name `local` is reserved");
}

#[test]
fn missing_external_url_should_be_an_error_with_a_hosted_forge() {
    let text = GITHUB.replace("external-url: https://ci.example.org\n", "");
    assert_error(
        &text,
        "1:1",
        "external-url is required: forge `gh` (github)",
    );
}

#[test]
fn invalid_external_url_should_be_an_error() {
    let text = GITHUB.replace("https://ci.example.org", "ci.example.org");
    assert_error(
        &text,
        "1:1",
        "external-url `ci.example.org` must be an http:// or https:// url",
    );
    let text = format!("{MINIMAL}external-url: ftp://x\n");
    assert_error(&text, "11:1", "must be an http:// or https:// url");
}

#[test]
fn gitea_without_api_url_should_be_an_error() {
    let text = GITHUB.replace("kind: github", "kind: gitea");
    assert_error(&text, "3:3", "gitea forge `gh` needs an api-url");
    let text = GITHUB.replace(
        "kind: github",
        "kind: gitea\n    api-url: https://codeberg.org/api/v1",
    );
    spec(&text);
}

#[test]
fn local_forge_with_a_token_file_should_be_an_error() {
    let text = MINIMAL.replace(
        "    kind: local\n",
        "    kind: local\n    token-file: /run/t\n",
    );
    assert_error(&text, "6:5", "local forge `here` takes no token-file");
}

#[test]
fn relative_state_dir_should_be_an_error() {
    assert_error(
        &MINIMAL.replace("/var/lib/reconix", "state"),
        "1:1",
        "state-dir `state` must be an absolute path",
    );
}

#[test]
fn empty_context_prefix_should_be_an_error() {
    let text = format!("{MINIMAL}statuses:\n  context-prefix: ''\n");
    assert_error(&text, "12:3", "context-prefix must not be empty");
}

#[test]
fn every_semantic_error_should_be_reported_in_file_order() {
    let text = "\
forges:
  gh:
    kind: github
    repos:
      acme/widgets:
        branches: ['a b']
builders:
  remote:
    local: {}
";
    let errors = errors(text);
    assert_eq!(errors.len(), 5, "{errors:#?}");
    let positions: Vec<&str> = errors
        .iter()
        .map(|e| e.split(": ").next().unwrap())
        .collect();
    assert_eq!(positions, ["1:1", "2:3", "2:3", "6:20", "9:5"]);
}

#[test]
fn load_should_read_a_file_and_resolve_paths_against_its_directory() {
    let dir = std::env::temp_dir().join(format!("reconix-spec-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("spec.yaml");
    std::fs::write(&file, MINIMAL.replace("/srv/demo", "demo")).unwrap();
    let spec = load(&file).unwrap();
    let (_, _, repo) = spec.repos().next().unwrap();
    assert_eq!(repo.path, Some(dir.join("demo")));
    std::fs::remove_dir_all(&dir).unwrap();

    let missing = PathBuf::from("/nonexistent/reconix/spec.yaml");
    let err = load(&missing).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/reconix/spec.yaml: cannot read the spec file"),
        "{err}"
    );
}

#[test]
fn s3_cache_without_credentials_should_be_an_error() {
    let text = format!(
        "{MINIMAL}caches:
  - push-url: s3://bucket?region=eu-west-1
    public-key: k-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=
    signing-key-file: /run/key
"
    );
    assert_error(
        &text,
        "12:5",
        "cache `s3://bucket?region=eu-west-1` is an S3 bucket but has no s3-credentials-file",
    );
    let with = format!("{text}    s3-credentials-file: /run/s3\n");
    assert_eq!(
        spec(&with).caches[0]
            .s3_credentials_file
            .as_ref()
            .map(SecretFile::path),
        Some(Path::new("/run/s3"))
    );
}

#[test]
fn s3_credentials_on_another_cache_should_be_an_error() {
    let text = format!(
        "{MINIMAL}caches:
  - push-url: file:///srv/cache
    public-key: k-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=
    signing-key-file: /run/key
    s3-credentials-file: /run/s3
"
    );
    assert_error(
        &text,
        "15:5",
        "cache `file:///srv/cache` is not an S3 bucket: s3-credentials-file is only for s3://",
    );
}

#[test]
fn enrollment_limits_should_default_to_five_seconds_and_sixteen_per_source() {
    let text = format!(
        "{MINIMAL}builders:\n  enrollment:\n    listen: 0.0.0.0:7070\n    token-file: /run/t\n"
    );
    let enrollment = spec(&text).builders.enrollment.unwrap();
    assert_eq!(enrollment.handshake_timeout, Duration::from_secs(5));
    assert_eq!(enrollment.max_pending_per_source, 16);
    let text = text.replace(
        "token-file: /run/t\n",
        "token-file: /run/t\n    handshake-timeout: 2s\n    max-pending-per-source: 64\n",
    );
    let enrollment = spec(&text).builders.enrollment.unwrap();
    assert_eq!(enrollment.handshake_timeout, Duration::from_secs(2));
    assert_eq!(enrollment.max_pending_per_source, 64);
}

#[test]
fn an_enrollment_handshake_timeout_out_of_range_should_be_an_error() {
    for timeout in ["500ms", "2min"] {
        let text = format!(
            "{MINIMAL}builders:\n  enrollment:\n    listen: 0.0.0.0:7070\n    token-file: /run/t\n    handshake-timeout: {timeout}\n"
        );
        assert_error(
            &text,
            "15:5",
            "handshake-timeout must be between 1s and 60s",
        );
    }
}

#[test]
fn zero_pending_connections_per_source_should_be_an_error() {
    let text = format!(
        "{MINIMAL}builders:\n  enrollment:\n    listen: 0.0.0.0:7070\n    token-file: /run/t\n    max-pending-per-source: 0\n"
    );
    assert_error(&text, "15:5", "max-pending-per-source must be at least 1");
}

#[test]
fn evaluation_should_default_to_the_cores_2_gib_each_and_an_hour() {
    let spec = spec(MINIMAL);
    let e = &spec.evaluation;
    assert_eq!(e.workers, None);
    assert!(e.workers_or_cores() >= 1);
    assert_eq!(e.max_memory, ByteSize(2 << 30));
    assert_eq!(e.timeout, Duration::from_secs(3600));
    assert!(!e.allow_import_from_derivation);
    let (_, _, repo) = spec.repos().next().unwrap();
    assert_eq!(repo.eval_timeout_or(e.timeout), Duration::from_secs(3600));
}

#[test]
fn evaluation_settings_and_a_repo_s_eval_timeout_should_be_read() {
    let text = format!(
        "{MINIMAL}        eval-timeout: 10m\nevaluation:\n  workers: 3\n  max-memory: 1 GiB\n  timeout: 2h\n  allow-import-from-derivation: true\n"
    );
    let spec = spec(&text);
    let e = &spec.evaluation;
    assert_eq!(e.workers_or_cores(), 3);
    assert_eq!(e.budget(), ByteSize(3 << 30));
    assert!(e.allow_import_from_derivation);
    let (_, _, repo) = spec.repos().next().unwrap();
    assert_eq!(repo.eval_timeout_or(e.timeout), Duration::from_secs(600));
}

#[test]
fn evaluation_settings_out_of_range_should_be_refused_where_they_are() {
    let at = |extra: &str| format!("{MINIMAL}evaluation:\n{extra}");
    assert_error(&at("  workers: 0\n"), "12:3", "workers must be at least 1");
    assert_error(&at("  max-memory: 1 MiB\n"), "12:3", "at least 64 MiB");
    assert_error(
        &at("  timeout: 0s\n"),
        "12:3",
        "timeout must be longer than zero",
    );
    assert_error(
        &format!("{MINIMAL}        eval-timeout: 0s\n"),
        "11:9",
        "eval-timeout must be longer than zero",
    );
}
