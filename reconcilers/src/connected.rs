//! The connected, admitted agents: the registry enrolment (`agents`) fills and empties, and the
//! loops read through [`crate::Ctx::agents`].
//!
//! A leaf module: `context` names [`Agents`], and `agents` uses `context` (to wake loops), so the
//! registry lives here rather than in `agents` (which would make the two import each other).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use reconix_agent::coordinator::AgentConn;
use reconix_spec::BuilderName;

/// The connected, admitted agents by name.
#[derive(Debug, Clone, Default)]
pub struct Agents {
    inner: Arc<Mutex<HashMap<BuilderName, Arc<AgentConn>>>>,
}

impl Agents {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BuilderName, Arc<AgentConn>>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the connection of agent `name`, if it is connected.
    pub fn get(&self, name: &BuilderName) -> Option<Arc<AgentConn>> {
        self.lock().get(name).cloned()
    }

    /// Returns the names of the connected agents, sorted.
    pub fn names(&self) -> Vec<BuilderName> {
        let mut names: Vec<BuilderName> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// Registers a connection; returns the one it replaces (the same agent reconnected).
    pub(crate) fn insert(&self, conn: Arc<AgentConn>) -> Option<Arc<AgentConn>> {
        self.lock().insert(conn.name().clone(), conn)
    }

    /// Forgets `conn` unless a newer connection of the same agent replaced it; returns
    /// whether it did.
    pub(crate) fn remove(&self, conn: &Arc<AgentConn>) -> bool {
        let mut map = self.lock();
        if map.get(conn.name()).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            map.remove(conn.name());
            return true;
        }
        false
    }
}
