//! Parsers for the JSON printed by the evaluation expressions `src/expr/names.nix` (attribute
//! paths) and `src/expr/jobs.nix` (one result per attribute).
//!
//! Only call these on the stdout of a `nix eval` that exited with status 0: `nix eval --json`
//! streams its output, so a failed run leaves partial JSON behind.
use reconix_spec::names::StorePath;
use reconix_spec::{JobMeta, Outputs};
use serde::Deserialize;

/// A flake attribute path as a list of names, e.g. `["packages", "x86_64-linux", "hello"]`.
pub type AttrNames = Vec<String>;

/// Parses the output of `names.nix`: the attribute paths of the jobs, in Nix's order.
///
/// # Errors
/// Returns the JSON error when the text is not a list of lists of strings.
pub fn parse_names(json: &str) -> Result<Vec<AttrNames>, serde_json::Error> {
    serde_json::from_str(json)
}

/// What `jobs.nix` says about one attribute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RawJob {
    /// The attribute is a derivation.
    Ok(RawDrv),
    /// The attribute is known to be unusable, e.g. it is not a derivation.
    Error(String),
    /// `tryEval` caught an error (a `throw` or failed `assert`); evaluating the attribute alone
    /// gives its message.
    Failed,
}

/// A derivation as `jobs.nix` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawDrv {
    /// The `.drv` path.
    pub drv_path: StorePath,
    /// The `name` attribute.
    pub name: String,
    /// The `system` attribute, as a string (not validated).
    pub system: String,
    /// Output name → output path, in name order.
    pub outputs: Outputs,
    /// What reconix uses of `meta`: absent when the derivation has none (most test flakes,
    /// and the expression prints none then); boxed because it is large.
    #[serde(default)]
    pub meta: Option<Box<JobMeta>>,
    /// For an aggregate job (Hydra's `_hydraAggregate = true`): its constituents as written.
    #[serde(default)]
    pub constituents: Option<Vec<RawConstituent>>,
}

/// One constituent of an aggregate job as `jobs.nix` prints it, before it is resolved against
/// the other jobs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RawConstituent {
    /// A derivation, by its `.drv` path.
    DrvPath(StorePath),
    /// A job name or a glob over job names (`"checks.x86_64-linux.*"`).
    Name(String),
}

/// Parses one result a worker printed (`{"i": <index>, "r": <jobs.nix result>}`): `None` when
/// the text is not of that shape at all; a result `r` that cannot be read is that attribute's
/// [`RawJob::Error`], so that it is never evaluated again in a loop.
pub fn parse_result(json: &str) -> Option<(usize, RawJob)> {
    #[derive(Deserialize)]
    struct Traced {
        i: usize,
        r: serde_json::Value,
    }
    let traced: Traced = serde_json::from_str(json).ok()?;
    let job = RawJob::deserialize(traced.r).unwrap_or_else(|e| {
        RawJob::Error(format!("reconix cannot read the evaluator's result: {e}"))
    });
    Some((traced.i, job))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/eval/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap()
    }

    #[test]
    fn parse_names_should_list_per_system_and_nixos_attributes() {
        let names = parse_names(&fixture("names.json")).unwrap();
        assert_eq!(names.len(), 25);
        assert_eq!(names[0], ["packages", "x86_64-linux", "a"]);
        assert_eq!(names[22], ["devShells", "x86_64-linux", "default"]);
        assert_eq!(
            names[24],
            [
                "nixosConfigurations",
                "demo",
                "config",
                "system",
                "build",
                "toplevel"
            ]
        );
    }

    #[test]
    fn outputs_should_be_read_as_pairs_in_name_order_a_repeated_name_winning() {
        let p = |n: &str| format!("/nix/store/{:0>32}-{n}", n.len());
        let json = format!(
            r#"{{"drvPath":"/nix/store/{:0>32}-m.drv","name":"m","system":"x86_64-linux","outputs":{{"out":"{}","dev":"{}","out":"{}"}}}}"#,
            1,
            p("a"),
            p("dev"),
            p("b")
        );
        let drv: RawDrv = serde_json::from_str(&json).unwrap();
        let got: Vec<(&str, &str)> = drv
            .outputs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, [("dev", p("dev").as_str()), ("out", p("b").as_str())]);
        assert!(
            serde_json::from_str::<RawDrv>(&json.replace(r#""outputs":{"#, r#""outputs":["#))
                .is_err()
        );
    }

    #[test]
    fn results_should_read_derivations_caught_failures_and_known_errors() {
        // The fixture evaluates every attribute of names.json that tryEval survives.
        let jobs: Vec<RawJob> = serde_json::from_str(&fixture("jobs.json")).unwrap();
        assert_eq!(jobs.len(), 20);
        let drv = |i: usize| match &jobs[i] {
            RawJob::Ok(drv) => drv.clone(),
            other => panic!("{i}: {other:?}"),
        };
        let a = drv(0);
        assert_eq!((a.name.as_str(), a.system.as_str()), ("a", "x86_64-linux"));
        assert!(a.drv_path.is_derivation());
        assert_eq!(
            a.outputs.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["out"]
        );
        // c and default are the same derivation.
        assert_eq!(drv(3), drv(4));
        assert_eq!(drv(12).outputs.len(), 3, "multi");
        // assertFails, depThrow, emptyThrow, envThrow, evalError, multiLine, and the NixOS
        // configuration without `config`.
        for i in [1, 5, 6, 7, 9, 13, 18] {
            assert_eq!(jobs[i], RawJob::Failed, "{i}");
        }
        assert_eq!(
            jobs[14],
            RawJob::Error("not a derivation (a int)".to_owned())
        );
        assert_eq!(drv(19).name, "nixos-system-demo");
    }

    #[test]
    fn results_should_read_the_constituents_of_an_aggregate() {
        let drv = "/nix/store/00000000000000000000000000000000-a.drv";
        let out = "/nix/store/00000000000000000000000000000000-agg";
        let json = format!(
            r#"{{"i":7,"r":{{"ok":{{"drvPath":"{drv}","name":"agg","system":"x86_64-linux","outputs":{{"out":"{out}"}},"constituents":[{{"drvPath":"{drv}"}},{{"name":"checks.*"}}]}}}}}}"#
        );
        let Some((7, RawJob::Ok(agg))) = parse_result(&json) else {
            panic!("{:?}", parse_result(&json))
        };
        assert_eq!(
            agg.constituents,
            Some(vec![
                RawConstituent::DrvPath(StorePath::new(drv).unwrap()),
                RawConstituent::Name("checks.*".to_owned()),
            ])
        );
        let Some((7, RawJob::Error(e))) =
            parse_result(&json.replace("\"name\":\"checks", "\"nom\":\"checks"))
        else {
            panic!("an unreadable constituent was read")
        };
        assert!(
            e.starts_with("reconix cannot read the evaluator's result: "),
            "{e}"
        );
    }

    #[test]
    fn results_that_are_not_an_index_and_a_result_should_be_none() {
        // What a flake's own trace could look like behind a marker it guessed, or a cut line.
        assert_eq!(
            parse_result(r#"{"i":1,"r":{"ok":{"drvPath":"/nix/store/"#),
            None
        );
        assert_eq!(parse_result(r#"["failed", 42]"#), None);
        assert_eq!(parse_result(r#"{"r":"failed"}"#), None);
        assert_eq!(
            parse_result(r#"{"i":3,"r":"failed"}"#),
            Some((3, RawJob::Failed))
        );
    }
}
