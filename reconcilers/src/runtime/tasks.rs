//! [`Tasks`]: the background tasks started outside the controllers (running builds, loop-health
//! writes, the WAL checkpointer, the enrollment listener, the webhook recorder), so that
//! shutdown waits for them instead of dropping them wherever they happen to be.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// Tracks spawned tasks so that shutdown can wait for them; cheap to clone (clones share the
/// same set).
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
}

impl Tasks {
    /// Returns an empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `task` on the current tokio runtime and tracks it until it ends.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Returns the underlying tracker, for crates that spawn without depending on this one
    /// (the web intake).
    #[must_use]
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Returns how many tracked tasks are running.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Returns whether no tracked task is running.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Waits up to `grace` for every tracked task to end (tasks they are still allowed to
    /// spawn are waited for too) and returns how many are still running then.
    ///
    /// Tasks must end by themselves: their owners cancel them first (builds through
    /// `RunningBuilds::cancel_all`, listeners through the shutdown token). Those still running
    /// after `grace` are dropped at their next await when the tokio runtime shuts down.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn shutdown_should_wait_for_a_tracked_task_to_end() {
        let tasks = Tasks::new();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let ended = Arc::new(AtomicBool::new(false));
        tasks.spawn({
            let ended = Arc::clone(&ended);
            async move {
                let _ = released.await;
                ended.store(true, Ordering::SeqCst);
            }
        });
        let shutdown = tasks.shutdown(Duration::from_secs(60));
        tokio::pin!(shutdown);
        // Polled once: the task has not ended, so neither has the shutdown.
        assert!(
            tokio::time::timeout(Duration::ZERO, &mut shutdown)
                .await
                .is_err()
        );
        release.send(()).unwrap();
        let left = tokio::time::timeout(Duration::from_secs(1), shutdown)
            .await
            .unwrap();
        assert_eq!(left, 0);
        assert!(ended.load(Ordering::SeqCst));
        assert!(tasks.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_should_give_up_on_a_task_after_the_grace_period() {
        let tasks = Tasks::new();
        tasks.spawn(std::future::pending::<()>());
        tasks.spawn(async {});
        assert_eq!(tasks.shutdown(Duration::from_secs(5)).await, 1);
    }
}
