//! Every annotated example spec in `examples/` must be valid.

use std::path::Path;

#[test]
fn every_example_should_be_a_valid_spec() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            if let Err(errors) = reconix_spec::load(&path) {
                panic!("{errors}");
            }
            checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    checked.sort();
    assert_eq!(
        checked,
        ["demo.yaml", "gitea.yaml", "github.yaml", "gitlab.yaml"]
    );
}

#[test]
fn the_github_example_should_use_every_section() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/github.yaml");
    let spec = reconix_spec::load(&path).unwrap();
    assert_eq!(spec.repos().count(), 2);
    assert_eq!(spec.builders.remote.len(), 1);
    assert_eq!(spec.caches.len(), 1);
    assert!(spec.retention.max_size.is_some());
}
