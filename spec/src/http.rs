//! Limits of the HTTP server (`http`): the port faces the internet, so idle and slow clients
//! must not be able to hold it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// How long the HTTP server waits for clients, and how many it serves at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Http {
    /// A new connection must send a complete request head within this time, or it is closed.
    pub header_timeout: Duration,
    /// A request body must arrive completely within this time after its head, or the
    /// connection is closed (forges wait about 10 s for an answer to a delivery anyway).
    pub body_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after this time.
    pub idle_timeout: Duration,
    /// At most this many connections are open at once; the daemon lowers it to stay well below
    /// its open-file limit. When it is reached, a new connection takes the slot of the one that
    /// has waited longest without a request in flight (then of the slowest request body), so
    /// idle or slow clients never lock out `/healthz`, the API or a forge's delivery.
    pub max_connections: u32,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}
