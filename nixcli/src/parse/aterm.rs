//! Parser for `.drv` files, Nix's ATerm derivation format:
//! `Derive([outputs],[inputDrvs],[inputSrcs],system,builder,[args],[env])`.
//!
//! Only what reconix needs is kept (outputs, input derivations with their output names, system,
//! and the `requiredSystemFeatures` environment entry); the rest is checked for well-formedness
//! and skipped. Strings escape `"` and `\` with a
//! backslash and write newline, carriage return and tab as `\n`, `\r`, `\t` (Nix's
//! `printString`); any other escaped character stands for itself.

use std::collections::BTreeMap;

use reconix_spec::names::StorePath;

/// The parts of a derivation reconix uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    /// Output name → output path (`None` for a content-addressed output, whose path is unknown
    /// until it is built).
    pub outputs: BTreeMap<String, Option<StorePath>>,
    /// Input derivation → the names of the outputs used.
    pub input_drvs: BTreeMap<StorePath, Vec<String>>,
    /// The system the derivation builds on, as written (not validated: it may be anything).
    pub system: String,
    /// The system features a builder must have (`kvm`, `big-parallel`, …), from the
    /// whitespace-separated environment entry `requiredSystemFeatures`: sorted, without
    /// duplicates, empty when the entry is absent.
    pub required_features: Vec<String>,
}

/// Why a `.drv` file could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {reason}")]
pub struct DrvParseError {
    /// Where in the input the problem was found.
    pub offset: usize,
    /// What was expected or wrong.
    pub reason: String,
}

/// Parses the text of a `.drv` file.
///
/// # Errors
/// Returns a [`DrvParseError`] when the text is not a well-formed derivation, or when an output or
/// input path is not a valid store path.
pub fn parse_derivation(text: &[u8]) -> Result<Derivation, DrvParseError> {
    parse(text, None)
}

/// The parts of a derivation that [`Derivation`] leaves out, which building it as a basic
/// derivation (`cmdBuildDerivation`) needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BasicParts {
    /// Output name → (hash algorithm, hash): empty strings but for fixed outputs.
    pub output_hashes: BTreeMap<String, (String, String)>,
    /// The input sources.
    pub input_srcs: Vec<String>,
    /// The builder program.
    pub builder: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The environment, in the `.drv`'s (key) order.
    pub env: Vec<(String, String)>,
}

/// Parses the text of a `.drv` file with the parts [`parse_derivation`] skips.
///
/// # Errors
/// As [`parse_derivation`].
pub fn parse_derivation_with_parts(text: &[u8]) -> Result<(Derivation, BasicParts), DrvParseError> {
    let mut parts = BasicParts::default();
    let drv = parse(text, Some(&mut parts))?;
    Ok((drv, parts))
}

/// Parses a derivation, filling `parts` when given (else its strings are skipped unkept).
fn parse(text: &[u8], mut parts: Option<&mut BasicParts>) -> Result<Derivation, DrvParseError> {
    let mut p = Parser { text, pos: 0 };
    p.expect(b"Derive(")?;

    let mut outputs = BTreeMap::new();
    p.list(|p| {
        p.expect(b"(")?;
        let name = p.string()?;
        p.expect(b",")?;
        let at = p.pos;
        let path = p.string()?;
        p.expect(b",")?;
        let hash_algo = p.string()?;
        p.expect(b",")?;
        let hash = p.string()?;
        p.expect(b")")?;
        if let Some(parts) = parts.as_deref_mut() {
            parts.output_hashes.insert(name.clone(), (hash_algo, hash));
        }
        let path = if path.is_empty() {
            None
        } else {
            Some(p.store_path(path, at)?)
        };
        outputs.insert(name, path);
        Ok(())
    })?;
    p.expect(b",")?;

    let mut input_drvs = BTreeMap::new();
    p.list(|p| {
        p.expect(b"(")?;
        let at = p.pos;
        let path = p.string()?;
        let path = p.store_path(path, at)?;
        p.expect(b",")?;
        let mut names = Vec::new();
        p.list(|p| {
            names.push(p.string()?);
            Ok(())
        })?;
        p.expect(b")")?;
        input_drvs.insert(path, names);
        Ok(())
    })?;
    p.expect(b",")?;

    let mut input_srcs = Vec::new();
    p.list(|p| {
        input_srcs.push(p.string()?);
        Ok(())
    })?;
    p.expect(b",")?;
    let system = p.string()?;
    p.expect(b",")?;
    let builder = p.string()?;
    p.expect(b",")?;
    let mut args = Vec::new();
    p.list(|p| {
        args.push(p.string()?);
        Ok(())
    })?;
    p.expect(b",")?;
    let mut required_features = Vec::new();
    let keep_env = parts.is_some();
    let mut env = Vec::new();
    p.list(|p| {
        p.expect(b"(")?;
        let key = p.string()?;
        p.expect(b",")?;
        let value = p.string()?;
        if key == REQUIRED_FEATURES {
            required_features = features(&value);
        }
        if keep_env {
            env.push((key, value));
        }
        p.expect(b")")
    })?; // env
    p.expect(b")")?;
    if p.pos != text.len() {
        return Err(p.error("trailing data after the derivation"));
    }
    if let Some(parts) = parts {
        parts.input_srcs = input_srcs;
        parts.builder = builder;
        parts.args = args;
        parts.env = env;
    }
    Ok(Derivation {
        outputs,
        input_drvs,
        system,
        required_features,
    })
}

/// The environment entry Nix reads a derivation's required system features from (a
/// `requiredSystemFeatures` attribute becomes it, its list joined with spaces).
const REQUIRED_FEATURES: &str = "requiredSystemFeatures";

/// Returns the features of a whitespace-separated list, sorted and without duplicates.
fn features(value: &str) -> Vec<String> {
    let mut features: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
    features.sort_unstable();
    features.dedup();
    features
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: impl Into<String>) -> DrvParseError {
        DrvParseError {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn expect(&mut self, token: &[u8]) -> Result<(), DrvParseError> {
        if self.text[self.pos..].starts_with(token) {
            self.pos += token.len();
            Ok(())
        } else {
            Err(self.error(format!("expected `{}`", String::from_utf8_lossy(token))))
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    /// Parses `[item,item,…]`, calling `item` for each element.
    fn list(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), DrvParseError>,
    ) -> Result<(), DrvParseError> {
        self.expect(b"[")?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected `,` or `]`")),
            }
        }
    }

    /// Parses a quoted string, undoing Nix's escapes.
    fn string(&mut self) -> Result<String, DrvParseError> {
        self.expect(b"\"")?;
        let mut out = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.error("unterminated string"));
            };
            self.pos += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.error("unterminated escape"));
                    };
                    self.pos += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        other => other,
                    });
                }
                other => out.push(other),
            }
        }
        // Environment values may hold arbitrary bytes; the fields kept here are ASCII.
        Ok(String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn store_path(&self, path: String, at: usize) -> Result<StorePath, DrvParseError> {
        StorePath::new(path).map_err(|e| DrvParseError {
            offset: at,
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> (Derivation, String) {
        let dir = format!("{}/tests/fixtures/drv", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read(format!("{dir}/{name}")).unwrap();
        let path = std::fs::read_to_string(format!("{dir}/{name}.path")).unwrap();
        (parse_derivation(&text).unwrap(), path.trim().to_owned())
    }

    fn sp(s: &str) -> StorePath {
        StorePath::new(s).unwrap()
    }

    #[test]
    fn parse_derivation_should_read_a_derivation_without_inputs() {
        let (drv, _) = fixture("a.drv");
        assert_eq!(drv.system, "x86_64-linux");
        assert_eq!(
            drv.outputs,
            BTreeMap::from([(
                "out".to_owned(),
                Some(sp("/nix/store/3ncc6v3x1g25lwynspd1xxbxknmpi33x-a"))
            )])
        );
        assert!(drv.input_drvs.is_empty());
    }

    #[test]
    fn parse_derivation_should_read_input_derivations_with_their_output_names() {
        let (a, a_path) = fixture("a.drv");
        let (b, b_path) = fixture("b.drv");
        let (c, _) = fixture("c.drv");
        assert_eq!(
            b.input_drvs,
            BTreeMap::from([(sp(&a_path), vec!["out".to_owned()])])
        );
        assert_eq!(c.input_drvs.keys().collect::<Vec<_>>(), [&sp(&b_path)]);
        assert_eq!(a.outputs.len(), 1);
    }

    #[test]
    fn parse_derivation_should_read_every_output_of_a_multi_output_derivation() {
        let (drv, _) = fixture("multi.drv");
        assert_eq!(
            drv.outputs.keys().map(String::as_str).collect::<Vec<_>>(),
            ["dev", "doc", "out"]
        );
        assert!(drv.outputs.values().all(Option::is_some));
    }

    #[test]
    fn parse_derivation_should_undo_string_escapes() {
        // The fixture's env holds `say "hi" \ back\slash` and `line1<LF>line2<TAB>tab<CR>cr`;
        // they are skipped, so check the unescaping on the same text through the parser.
        let (drv, _) = fixture("escapes.drv");
        assert_eq!(drv.outputs.len(), 1);
        let mut p = Parser {
            text: br#""say \"hi\" \\ back\\slash" "line1\nline2\ttab\rcr" "\$\{x}""#,
            pos: 0,
        };
        assert_eq!(p.string().unwrap(), r#"say "hi" \ back\slash"#);
        p.pos += 1;
        assert_eq!(p.string().unwrap(), "line1\nline2\ttab\rcr");
        p.pos += 1;
        assert_eq!(p.string().unwrap(), "${x}");
    }

    #[test]
    fn parse_derivation_should_read_fixed_output_derivations() {
        let (drv, _) = fixture("fixed.drv");
        assert_eq!(
            drv.outputs["out"].as_ref().map(StorePath::name),
            Some("fixed")
        );
    }

    #[test]
    fn parse_derivation_should_keep_an_empty_output_path_as_unknown() {
        let text = br#"Derive([("out","","r:sha256","")],[],[],"x86_64-linux","/bin/sh",[],[])"#;
        assert_eq!(parse_derivation(text).unwrap().outputs["out"], None);
    }

    #[test]
    fn parse_derivation_should_read_required_features_sorted_and_deduplicated() {
        let text = br#"Derive([("out","/nix/store/00000000000000000000000000000000-x","","")],[],[],"x86_64-linux","/bin/sh",[],[("name","x"),("requiredSystemFeatures","kvm big-parallel\tkvm\n nixos-test ")])"#;
        assert_eq!(
            parse_derivation(text).unwrap().required_features,
            ["big-parallel", "kvm", "nixos-test"]
        );
        let blank =
            br#"Derive([],[],[],"x86_64-linux","/bin/sh",[],[("requiredSystemFeatures","  ")])"#;
        assert!(
            parse_derivation(blank)
                .unwrap()
                .required_features
                .is_empty()
        );
    }

    #[test]
    fn parse_derivation_should_leave_required_features_empty_when_absent() {
        for name in ["a.drv", "multi.drv", "nixos.drv"] {
            let (drv, _) = fixture(name);
            assert!(drv.required_features.is_empty(), "{name}");
        }
    }

    #[test]
    fn parse_derivation_should_reject_malformed_input() {
        for bad in [
            &b""[..],
            b"Derive(",
            b"Derive([],[],[],\"x86_64-linux\",\"/bin/sh\",[],[])trailing",
            b"Derive([(\"out\",\"/tmp/not-a-store-path\",\"\",\"\")],[],[],\"s\",\"b\",[],[])",
            b"Derive([],[],[],\"unterminated,\"b\",[],[])",
            b"Derive([],[],[],\"s\",\"b\",[\"a\" \"b\"],[])",
        ] {
            assert!(
                parse_derivation(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let err = parse_derivation(b"Derive([x").unwrap_err();
        assert_eq!(err.offset, 8);
    }
}
