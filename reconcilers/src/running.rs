//! What the `builds` loop shares with the rest of the crate through [`crate::Ctx`]: the builds
//! this process runs (drv path → the builder it runs on and its cancellation token) and the
//! loop's key, [`Placement`].
//!
//! A leaf module: `context` names these types, and the `builds` loop uses `context`, so they
//! live here rather than in `builds` (which would make the two import each other).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use reconix_spec::{BuilderName, StorePath};
use tokio_util::sync::CancellationToken;

/// The one key of the `builds` loop: placement is global (every job of every live evaluation,
/// across the local builder and the agents), so one run of the loop reconciles all of it.
/// Shown as `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Placement;

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("all")
    }
}

#[derive(Debug)]
struct Entry {
    builder: BuilderName,
    cancel: CancellationToken,
}

/// The builds this process is running, by drv path.
#[derive(Debug, Default, Clone)]
pub struct RunningBuilds {
    inner: Arc<Mutex<BTreeMap<StorePath, Entry>>>,
}

impl RunningBuilds {
    /// Returns the drvs being built, with the builder each one runs on.
    pub fn drvs(&self) -> BTreeMap<StorePath, BuilderName> {
        self.lock()
            .iter()
            .map(|(drv, e)| (drv.clone(), e.builder.clone()))
            .collect()
    }

    /// Registers a build on `builder`; returns its cancellation token, or `None` when the drv
    /// already runs.
    pub(crate) fn start(
        &self,
        drv: &StorePath,
        builder: &BuilderName,
    ) -> Option<CancellationToken> {
        let mut map = self.lock();
        if map.contains_key(drv) {
            return None;
        }
        let cancel = CancellationToken::new();
        map.insert(
            drv.clone(),
            Entry {
                builder: builder.clone(),
                cancel: cancel.clone(),
            },
        );
        Some(cancel)
    }

    pub(crate) fn cancel(&self, drv: &StorePath) {
        if let Some(e) = self.lock().get(drv) {
            e.cancel.cancel();
        }
    }

    pub(crate) fn finish(&self, drv: &StorePath) {
        self.lock().remove(drv);
    }

    /// Cancels every running build (daemon shutdown).
    pub fn cancel_all(&self) {
        for e in self.lock().values() {
            e.cancel.cancel();
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

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<StorePath, Entry>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map stays usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
