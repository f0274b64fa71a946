//! `reconix_spec::parse`: the operator's YAML spec (text and a file name for its messages).
//! Input: the spec text (inputs that are not UTF-8 are skipped, as `load` refuses them).
//!
//! Checks: no panic (nor stack overflow) on any text; every error is located in the file; a spec that
//! parses serialises back to YAML.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A relative name: paths in the spec stay relative and nothing on disk is looked at.
    let file = Path::new("fuzz.yaml");
    match reconix_spec::parse(text, file) {
        Ok(spec) => {
            serde_yaml::to_string(&spec).expect("a parsed spec serialises");
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "an error without a problem");
            for error in &errors {
                assert_eq!(error.file, file, "{error}");
            }
            let _ = errors.to_string();
        }
    }
});
