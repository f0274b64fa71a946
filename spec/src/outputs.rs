//! [`Outputs`]: a derivation's outputs, name → store path, as a sorted vector.
//!
//! A job holds its outputs from evaluation to the database and back. Most derivations have one
//! output and few more than three, so a sorted vector answers lookups as fast as a map, and a
//! `BTreeMap` of one entry costs some 500 bytes (a whole node): 25 MB for 50,000 jobs.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::names::StorePath;

/// Output name → store path, sorted by name, each name once. Serialised as a JSON object.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Outputs(Vec<(String, StorePath)>);

/// Iterates over `(name, path)` pairs, by name.
pub type Iter<'a> = std::iter::Map<
    std::slice::Iter<'a, (String, StorePath)>,
    fn(&'a (String, StorePath)) -> (&'a String, &'a StorePath),
>;

fn pair_refs(pair: &(String, StorePath)) -> (&String, &StorePath) {
    (&pair.0, &pair.1)
}

impl Outputs {
    /// Returns no outputs.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// Returns the path of output `name`.
    pub fn get(&self, name: &str) -> Option<&StorePath> {
        self.position(name).ok().map(|i| &self.0[i].1)
    }

    /// Returns true when there is an output `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Sets output `name` to `path`; returns the path it had.
    pub fn insert(&mut self, name: String, path: StorePath) -> Option<StorePath> {
        match self.position(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, path)),
            Err(i) => {
                self.0.insert(i, (name, path));
                None
            }
        }
    }

    /// Returns how many outputs there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Returns true when there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Returns the `(name, path)` pairs, by name.
    pub fn iter(&self) -> Iter<'_> {
        self.0.iter().map(pair_refs)
    }

    /// Returns the names, sorted.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator {
        self.0.iter().map(|(name, _)| name)
    }

    /// Returns the paths, by name.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &StorePath> + ExactSizeIterator {
        self.0.iter().map(|(_, path)| path)
    }

    /// Returns the paths, by name.
    pub fn into_values(self) -> impl DoubleEndedIterator<Item = StorePath> + ExactSizeIterator {
        self.0.into_iter().map(|(_, path)| path)
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }
}

impl FromIterator<(String, StorePath)> for Outputs {
    /// Collects pairs; a later pair with the same name wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (String, StorePath)>>(iter: I) -> Self {
        let mut pairs: Vec<(String, StorePath)> = iter.into_iter().collect();
        // Stable: among equal names the last one given ends up last, and is kept.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(String, StorePath)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match kept.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => kept.push(pair),
            }
        }
        kept.shrink_to_fit();
        Self(kept)
    }
}

impl<const N: usize> From<[(String, StorePath); N]> for Outputs {
    fn from(pairs: [(String, StorePath); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl From<BTreeMap<String, StorePath>> for Outputs {
    fn from(map: BTreeMap<String, StorePath>) -> Self {
        Self(map.into_iter().collect())
    }
}

impl From<Outputs> for BTreeMap<String, StorePath> {
    fn from(outputs: Outputs) -> Self {
        outputs.0.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Outputs {
    type Item = (&'a String, &'a StorePath);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Outputs {
    type Item = (String, StorePath);
    type IntoIter = std::vec::IntoIter<(String, StorePath)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl Serialize for Outputs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Outputs {
    /// Reads a JSON object straight into pairs (no map built on the way); a later duplicate
    /// name wins, as in a map.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> serde::de::Visitor<'de> for Pairs {
            type Value = Outputs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of output names to store paths")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Outputs, A::Error> {
                let mut pairs: Vec<(String, StorePath)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(1).min(16));
                while let Some(pair) = map.next_entry::<String, StorePath>()? {
                    pairs.push(pair);
                }
                Ok(pairs.into_iter().collect())
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> StorePath {
        StorePath::new(format!("/nix/store/{}-{name}", "a".repeat(32))).unwrap()
    }

    #[test]
    fn outputs_should_behave_like_a_sorted_map() {
        let mut outputs: Outputs = [
            ("out".to_owned(), path("x")),
            ("dev".to_owned(), path("x-dev")),
            ("out".to_owned(), path("y")),
        ]
        .into();
        assert_eq!(outputs.len(), 2);
        assert_eq!(outputs.keys().collect::<Vec<_>>(), ["dev", "out"]);
        assert_eq!(outputs.get("out"), Some(&path("y")), "the later pair wins");
        assert!(outputs.contains_key("dev") && !outputs.contains_key("doc"));
        assert_eq!(outputs.insert("bin".to_owned(), path("b")), None);
        assert_eq!(
            outputs.insert("dev".to_owned(), path("d")),
            Some(path("x-dev"))
        );
        assert_eq!(outputs.keys().collect::<Vec<_>>(), ["bin", "dev", "out"]);
        let map: BTreeMap<String, StorePath> = outputs.clone().into();
        assert_eq!(Outputs::from(map), outputs);
    }

    #[test]
    fn outputs_should_read_and_write_a_json_object() {
        let outputs = Outputs::from([
            ("out".to_owned(), path("x")),
            ("dev".to_owned(), path("x-dev")),
        ]);
        let json = serde_json::to_string(&outputs).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"dev":"{}","out":"{}"}}"#,
                path("x-dev").as_str(),
                path("x").as_str()
            )
        );
        assert_eq!(serde_json::from_str::<Outputs>(&json).unwrap(), outputs);
        assert!(serde_json::from_str::<Outputs>(r#"{"out":"not a path"}"#).is_err());
    }
}
