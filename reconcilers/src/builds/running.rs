//! The builds this process runs: drv path → cancellation token.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use reconix_spec::StorePath;
use tokio_util::sync::CancellationToken;

/// The builds this process is running, by drv path.
#[derive(Debug, Default, Clone)]
pub struct RunningBuilds {
    inner: Arc<Mutex<BTreeMap<StorePath, CancellationToken>>>,
}

impl RunningBuilds {
    /// Returns the drvs being built.
    pub fn drvs(&self) -> BTreeSet<StorePath> {
        self.lock().keys().cloned().collect()
    }

    /// Registers a build; returns its cancellation token, or `None` when it already runs.
    pub(super) fn start(&self, drv: &StorePath) -> Option<CancellationToken> {
        let mut map = self.lock();
        if map.contains_key(drv) {
            return None;
        }
        let token = CancellationToken::new();
        map.insert(drv.clone(), token.clone());
        Some(token)
    }

    pub(super) fn cancel(&self, drv: &StorePath) {
        if let Some(token) = self.lock().get(drv) {
            token.cancel();
        }
    }

    pub(super) fn finish(&self, drv: &StorePath) {
        self.lock().remove(drv);
    }

    /// Cancels every running build (daemon shutdown).
    pub fn cancel_all(&self) {
        for token in self.lock().values() {
            token.cancel();
        }
    }

    /// Returns how many builds are running.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Returns true when no build is running.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<StorePath, CancellationToken>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map stays usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
