//! The reconix spec: the operator's desired state, as typed YAML.
//!
//! [`load`] reads a spec file into a [`Spec`] and reports every problem at its line and column
//! ([`reload`] also refuses a spec that would silently drop every repository);
//! [`Spec::validate`] holds the rules beyond the types; [`json_schema`] describes the format for
//! editors, docs and the NixOS module.
//!
//! Pure code: no IO beyond reading the spec file in [`load`] and [`reload`] (and a secret in
//! [`SecretFile::read`]), no async, no tokio.

mod builders;
mod cache;
mod error;
mod evaluation;
mod forge;
mod housekeeping;
mod http;
mod limits;
mod load;
mod locate;
mod meta;
pub mod names;
mod nixos;
pub mod outputs;
mod reference;
mod refusal;
mod scan;
mod spec;
mod validate;
mod values;

pub use builders::{Builders, Enrollment, Liveness, LocalBuilder, Offer, RemoteBuilder};
pub use cache::{Cache, CacheKind};
pub use error::{Result, SpecError, SpecErrors};
pub use evaluation::Evaluation;
pub use forge::{AttrKind, Forge, ForgeKind, JobRoot, Recurse, Repo, Walk};
pub use housekeeping::{Retention, Statuses};
pub use http::Http;
pub use limits::{MAX_SPEC_BYTES, MAX_SPEC_DEPTH, MAX_SPEC_NODES};
pub use load::{load, parse, reload};
pub use meta::{DEFAULT_SCHEDULING_PRIORITY, JobMeta};
pub use names::*;
pub use nixos::nixos_options;
pub use outputs::Outputs;
pub use reference::markdown_reference;
pub use spec::Spec;
pub use validate::Problem;
pub use values::{ByteSize, Duration, Secret, SecretFile, ValueError};

/// Returns the JSON Schema of the spec format, with descriptions taken from the doc comments.
///
/// `docs/spec.schema.json` is this value, pretty-printed; a test keeps it current.
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(Spec).to_value()
}

#[cfg(test)]
mod tests;
