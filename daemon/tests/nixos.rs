//! The Nix side of reconix, checked with plain Nix (no nixpkgs can be fetched here):
//! every `.nix` file parses; the generated module options have exactly the schema's keys; each
//! example spec, as NixOS `settings`, renders to a spec `reconix check` accepts, its secret files
//! passed as systemd credentials; and `services.reconix` wires the service as documented.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: allow-unwrap-in-tests covers only #[test] fns"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn require_nix() {
    let found = Command::new("nix-instantiate").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "nix-instantiate is not usable: run `make test` (it installs Nix) or scripts/install-nix.sh"
    );
}

/// Every `.nix` file of the repository, outside build output.
fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "node_modules") {
                nix_files(&path, out);
            }
        } else if name.ends_with(".nix") {
            out.push(path);
        }
    }
}

#[test]
fn every_nix_file_should_parse() {
    require_nix();
    let mut files = Vec::new();
    nix_files(&root(), &mut files);
    for expected in [
        "flake.nix",
        "nix/module.nix",
        "nix/agent-module.nix",
        "nix/options.nix",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(expected)),
            "{expected} is missing"
        );
    }
    for file in files {
        let out = Command::new("nix-instantiate")
            .arg("--parse")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not parse: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Evaluates nix/tests/eval.nix for the settings in `settings_file`.
fn eval(settings_file: &Path) -> Value {
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--read-write-mode"])
        .arg(root().join("nix/tests/eval.nix"))
        .arg("--arg")
        .arg("settingsFile")
        .arg(settings_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "evaluating the module for {}: {}",
        settings_file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The schema's keys as a tree: objects for nested properties (through `$ref`, nullable,
/// list items and map values), `"leaf"` for values.
fn schema_tree(prop: &Value, defs: &Map<String, Value>) -> Value {
    if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
        return schema_tree(&defs[r.trim_start_matches("#/$defs/")], defs);
    }
    if let Some(alts) = prop.get("anyOf").and_then(Value::as_array) {
        let other = alts.iter().find(|a| a["type"] != "null").unwrap();
        return schema_tree(other, defs);
    }
    if let Some(items) = prop.get("items") {
        return schema_tree(items, defs);
    }
    if let Some(values @ Value::Object(_)) = prop.get("additionalProperties") {
        return schema_tree(values, defs);
    }
    match prop.get("properties").and_then(Value::as_object) {
        Some(props) => Value::Object(
            props
                .iter()
                .map(|(k, v)| (k.clone(), schema_tree(v, defs)))
                .collect(),
        ),
        None => Value::String("leaf".to_owned()),
    }
}

/// The evaluated options tree with every type name replaced by `"leaf"`.
fn key_tree(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), key_tree(v))).collect())
        }
        _ => Value::String("leaf".to_owned()),
    }
}

/// Writes the JSON of `examples/<name>.yaml` to nix/tests/examples/<name>.json (what the
/// flake's `module-rendering` check reads), or checks it is current; returns its path.
fn example_json(name: &str) -> PathBuf {
    let yaml = std::fs::read_to_string(root().join(format!("examples/{name}.yaml"))).unwrap();
    let value: Value = serde_yaml::from_str(&yaml).unwrap();
    let json = serde_json::to_string_pretty(&value).unwrap() + "\n";
    let path = root().join(format!("nix/tests/examples/{name}.json"));
    if std::env::var_os("RECONIX_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &json).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap_or_default(),
        json,
        "{} is stale: run `RECONIX_BLESS=1 cargo test -p reconix --test nixos`",
        path.display()
    );
    path
}

fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".yaml").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn generated_options_should_have_exactly_the_schemas_keys() {
    require_nix();
    let schema = reconix_spec::json_schema();
    let defs = schema["$defs"].as_object().unwrap();
    let evaluated = eval(&example_json("demo"));
    assert_eq!(key_tree(&evaluated["options"]), schema_tree(&schema, defs));
    let secrets: Vec<&str> = evaluated["secretKeys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        secrets,
        [
            "api-token-file",
            "s3-credentials-file",
            "signing-key-file",
            "token-file",
            "webhook-secret-file"
        ]
    );
}

/// Collects the string values of the keys named in `keys`, anywhere in `v`.
fn values_of(v: &Value, keys: &[&str], out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::String(s) if keys.contains(&k.as_str()) => out.push(s.clone()),
                    _ => values_of(v, keys, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| values_of(i, keys, out)),
        _ => {}
    }
}

#[test]
fn every_example_should_render_to_a_spec_reconix_accepts_with_secrets_as_credentials() {
    require_nix();
    let secret_keys = [
        "api-token-file",
        "s3-credentials-file",
        "signing-key-file",
        "token-file",
        "webhook-secret-file",
    ];
    let dir = tempfile::tempdir().unwrap();
    let names = examples();
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        let settings_file = example_json(&name);
        let settings: Value =
            serde_json::from_str(&std::fs::read_to_string(&settings_file).unwrap()).unwrap();
        let evaluated = eval(&settings_file);
        let text = evaluated["rendered"]["text"].as_str().unwrap();
        let spec = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&spec, text).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_reconix"))
            .arg("check")
            .arg(&spec)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{name}: reconix check refused the rendered spec: {}\n{text}",
            String::from_utf8_lossy(&check.stderr)
        );

        // Every secret file became a credential, and only its credential path is in the spec.
        let mut originals = Vec::new();
        values_of(&settings, &secret_keys, &mut originals);
        let credentials: Vec<String> = evaluated["rendered"]["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            credentials.len(),
            originals.len(),
            "{name}: {credentials:?}"
        );
        let rendered: Value = serde_json::from_str(text).unwrap();
        let mut now = Vec::new();
        values_of(&rendered, &secret_keys, &mut now);
        for (original, credential) in originals.iter().zip(&now) {
            assert!(
                !text.contains(original.as_str()),
                "{name}: {original} left in the spec"
            );
            let id = credential
                .strip_prefix("/run/credentials/reconix.service/")
                .unwrap_or_else(|| panic!("{name}: {credential} is not a credential path"));
            assert!(
                credentials.contains(&format!("{id}:{original}")),
                "{name}: no LoadCredential for {id}:{original} in {credentials:?}"
            );
        }

        // The service runs the rendered spec as the dedicated, trusted, hardened user.
        let module = &evaluated["module"];
        assert_eq!(module["specText"].as_str(), Some(text), "{name}");
        assert!(
            module["execStart"]
                .as_str()
                .unwrap()
                .starts_with("/nix/store/00000000000000000000000000000000-reconix/bin/reconix serve --spec /nix/store/"),
            "{module}"
        );
        assert_eq!(
            module["LoadCredential"],
            evaluated["rendered"]["credentials"]
        );
        assert_eq!(module["User"], "reconix");
        assert_eq!(module["trustedUsers"], serde_json::json!(["reconix"]));
        assert_eq!(module["ProtectSystem"], "strict");
        assert_eq!(module["NoNewPrivileges"], true);
        assert_eq!(module["CapabilityBoundingSet"], "");
        assert_eq!(module["LimitNOFILE"], 65536);
        assert_eq!(
            module["environment"],
            serde_json::json!({ "NIX_REMOTE": "daemon", "MALLOC_ARENA_MAX": "2" })
        );
        // MemoryMax: the evaluators' budget (workers × max-memory) plus 1 GiB, when workers
        // is set (github.yaml: 2 × 1.5 GiB).
        match settings["evaluation"]["workers"].as_u64() {
            Some(_) => {
                assert_eq!(name, "github");
                assert_eq!(module["MemoryMax"]["condition"], true, "{name}");
                assert_eq!(
                    module["MemoryMax"]["content"],
                    (2 * 3 * (1_u64 << 29) + (1 << 30)).to_string()
                );
            }
            None => assert_eq!(module["MemoryMax"]["condition"], false, "{name}"),
        }
        assert_eq!(module["enableOption"], "bool");
        // The enrollment port is opened exactly when the example enrols builders.
        let port = settings["builders"]["enrollment"]["listen"]
            .as_str()
            .and_then(|l| l.rsplit(':').next())
            .map(|p| p.parse::<u64>().unwrap());
        match port {
            Some(port) => assert_eq!(
                module["firewall"]["content"],
                serde_json::json!([port]),
                "{name}"
            ),
            None => assert_eq!(module["firewall"]["condition"], false, "{name}"),
        }
    }
}
