//! Parsers for the Hydra conventions a build leaves in `$out/nix-support/`:
//! `hydra-build-products` (one product a line) and `hydra-release-name`. (`nix-support/failed`
//! needs no parser: only its existence counts.)
//!
//! A products line is `TYPE SUBTYPE PATH [DEFAULT-PATH]`, as Hydra reads it
//! (`src/lib/Hydra/Helper/BuildProducts.pm` … `queue-runner/build-result.cc`): TYPE and SUBTYPE
//! are words of letters, digits, `-` and `_`; PATH is a word or a `"…"`-quoted string (for
//! paths with spaces); DEFAULT-PATH (for directory products, the file to open) is a word. Hydra
//! skips lines that do not match; so does this parser, but it returns them so the caller can
//! say so.

/// One line of `nix-support/hydra-build-products`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProductLine {
    /// The product's type, e.g. `file`, `doc`, `report`.
    pub kind: String,
    /// Its subtype, e.g. `binary-dist`, `source-dist`, `manual`.
    pub subtype: String,
    /// Its path as written (quotes removed); the parser does not check where it points.
    pub path: String,
    /// For a directory product, the file inside it to open first.
    pub default_path: Option<String>,
}

/// The products of a `hydra-build-products` file and the lines that are not products.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Products {
    /// The products, in file order.
    pub products: Vec<ProductLine>,
    /// The non-empty lines that do not have the product shape, trimmed.
    pub rejected: Vec<String>,
}

/// Parses the text of a `hydra-build-products` file.
pub fn parse_build_products(text: &str) -> Products {
    let mut parsed = Products::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match parse_line(line) {
            Some(product) => parsed.products.push(product),
            None => parsed.rejected.push(line.to_owned()),
        }
    }
    parsed
}

/// Returns the release name in a `hydra-release-name` file: its first line, trimmed, when it
/// is not empty.
pub fn parse_release_name(text: &str) -> Option<String> {
    let name = text.lines().next()?.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Splits off the first whitespace-separated word of `s`.
fn word(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

fn parse_line(line: &str) -> Option<ProductLine> {
    let (kind, rest) = word(line)?;
    let (subtype, rest) = word(rest)?;
    if !is_word(kind) || !is_word(subtype) {
        return None;
    }
    let rest = rest.trim_start();
    let (path, rest) = if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"')?;
        let after = &quoted[end + 1..];
        // A quoted path ends the word: `"a b"c` is not a path.
        if !after.is_empty() && !after.starts_with(char::is_whitespace) {
            return None;
        }
        (&quoted[..end], after)
    } else {
        word(rest)?
    };
    if path.is_empty() {
        return None;
    }
    let default_path = match word(rest) {
        None => None,
        Some((default, tail)) if tail.trim().is_empty() => Some(default.to_owned()),
        Some(_) => return None,
    };
    Some(ProductLine {
        kind: kind.to_owned(),
        subtype: subtype.to_owned(),
        path: path.to_owned(),
        default_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(kind: &str, subtype: &str, path: &str, default: Option<&str>) -> ProductLine {
        ProductLine {
            kind: kind.to_owned(),
            subtype: subtype.to_owned(),
            path: path.to_owned(),
            default_path: default.map(str::to_owned),
        }
    }

    #[test]
    fn build_products_should_be_read_as_hydra_reads_them() {
        let text = "file binary-dist /nix/store/aaa-hello/bin/hello\n\
                    \n\
                    doc manual /nix/store/aaa-hello/share/doc index.html\n\
                    file source-dist \"/nix/store/aaa-hello/my file.tar.gz\"\n\
                    \tfile   tarball    /nix/store/aaa-hello/x.tgz   \n\
                    report coverage_2 \"/nix/store/aaa-hello/cov\" index.html\n";
        let parsed = parse_build_products(text);
        assert_eq!(
            parsed.products,
            [
                product(
                    "file",
                    "binary-dist",
                    "/nix/store/aaa-hello/bin/hello",
                    None
                ),
                product(
                    "doc",
                    "manual",
                    "/nix/store/aaa-hello/share/doc",
                    Some("index.html")
                ),
                product(
                    "file",
                    "source-dist",
                    "/nix/store/aaa-hello/my file.tar.gz",
                    None
                ),
                product("file", "tarball", "/nix/store/aaa-hello/x.tgz", None),
                product(
                    "report",
                    "coverage_2",
                    "/nix/store/aaa-hello/cov",
                    Some("index.html")
                ),
            ]
        );
        assert!(parsed.rejected.is_empty());
    }

    #[test]
    fn malformed_product_lines_should_be_returned_not_guessed() {
        let text = "file\n\
                    file binary-dist\n\
                    fi/le binary-dist /nix/store/a\n\
                    file binary-dist \"/nix/store/unterminated\n\
                    file binary-dist \"\"\n\
                    file binary-dist \"/nix/store/a\"tail\n\
                    file binary-dist /nix/store/a index.html extra\n";
        let parsed = parse_build_products(text);
        assert!(parsed.products.is_empty(), "{:?}", parsed.products);
        assert_eq!(parsed.rejected.len(), 7);
        assert_eq!(parsed.rejected[0], "file");
    }

    #[test]
    fn the_release_name_should_be_the_first_line_trimmed() {
        assert_eq!(
            parse_release_name("hello-2.12\nignored\n").as_deref(),
            Some("hello-2.12")
        );
        assert_eq!(
            parse_release_name("  hello-2.12  ").as_deref(),
            Some("hello-2.12")
        );
        assert_eq!(parse_release_name(""), None);
        assert_eq!(parse_release_name("\nhello"), None);
    }
}
