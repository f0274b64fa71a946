//! [`SpecReloader`]: publishes the spec file's new content to every loop.
//!
//! The file is polled (a hash of its bytes, so a `touch` or an editor's rewrite with the same
//! content changes nothing) and reloaded unconditionally on a trigger (SIGHUP). An invalid or
//! unreadable file is logged once per distinct content and the previous spec stays in force:
//! a typo must never stop CI.
//!
//! A poll loads only a *complete* write: a changed file is read again after a short settle time
//! and loaded only when it still has the same content, so a half-finished save (an editor
//! writing in place, a config deploy copying the file) is never taken for the desired state.
//! Writing the new file elsewhere and renaming it into place is atomic and needs no wait. A
//! trigger loads at once (the operator says the file is ready). Loading never holds the
//! reloader for more than [`LOAD_TIMEOUT`]: a spec that takes longer is rejected.

use std::fmt::{self, Display};
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// How often the file is checked for changes by default.
const DEFAULT_POLL: Duration = Duration::from_secs(2);

/// How long a changed file must keep its content before a poll loads it, by default.
const DEFAULT_SETTLE: Duration = Duration::from_millis(300);

/// The longest a load may take; the spec loader caps size and nesting, so only a pathological
/// file (or a stuck file system) gets near it.
const LOAD_TIMEOUT: Duration = Duration::from_secs(1);

type Loader<T> = Arc<dyn Fn(&Path, Option<&T>) -> Result<T, String> + Send + Sync>;

/// What the file looked like when last read: equal fingerprints mean nothing to do on a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fingerprint {
    Content(u64),
    Unreadable(io::ErrorKind),
}

impl Fingerprint {
    fn of(read: &io::Result<u64>) -> Self {
        match read {
            Ok(hash) => Self::Content(*hash),
            Err(err) => Self::Unreadable(err.kind()),
        }
    }
}

/// Why a reload is attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The poll timer: reload only if the content changed.
    Poll,
    /// An explicit trigger (SIGHUP): reload and publish even when unchanged.
    Trigger,
}

impl Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Poll => "file changed",
            Self::Trigger => "reload requested",
        })
    }
}

/// Watches a spec file and publishes each valid new version on a `watch` channel.
///
/// Every [`Controller`](super::Controller) subscribed to [`Self::subscribe`] runs all its keys
/// when a new spec is published.
pub struct SpecReloader<T> {
    path: PathBuf,
    loader: Loader<T>,
    poll: Duration,
    settle: Duration,
    triggers: Option<mpsc::Receiver<()>>,
    spec: watch::Sender<Arc<T>>,
    last_error: watch::Sender<Option<String>>,
    seen: Fingerprint,
    /// A changed content seen by the last poll, loaded if the next look finds it unchanged.
    settling: Option<Fingerprint>,
}

impl<T> fmt::Debug for SpecReloader<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpecReloader")
            .field("path", &self.path)
            .field("poll", &self.poll)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> SpecReloader<T> {
    /// Loads the spec at `path` with `loader` and returns a reloader publishing it.
    ///
    /// `loader` reads and validates the file; it gets the spec in force (`None` for the first
    /// load), so that it can refuse a change no sane operator means (every repository gone).
    /// Its error may hold several lines (one per problem), each logged separately on a rejected
    /// reload.
    ///
    /// # Errors
    /// Returns the loader's error when the initial spec is invalid: the daemon must not start
    /// without a valid spec.
    pub fn open<L, E>(path: impl Into<PathBuf>, loader: L) -> Result<Self, E>
    where
        L: Fn(&Path, Option<&T>) -> Result<T, E> + Send + Sync + 'static,
        E: Display,
    {
        let path = path.into();
        // Hash before loading: if the file changes in between, the next poll sees a new hash
        // and loads again. The other order could miss that change for good.
        let seen = Fingerprint::of(&hash_file(&path));
        let spec = loader(&path, None)?;
        let (spec, _) = watch::channel(Arc::new(spec));
        let (last_error, _) = watch::channel(None);
        Ok(Self {
            path,
            loader: Arc::new(move |path, current| {
                loader(path, current).map_err(|err| err.to_string())
            }),
            poll: DEFAULT_POLL,
            settle: DEFAULT_SETTLE,
            triggers: None,
            spec,
            last_error,
            seen,
            settling: None,
        })
    }

    /// Sets how often the file is checked for changes (default 2 s).
    #[must_use]
    pub fn poll_every(mut self, interval: Duration) -> Self {
        // `interval_at` panics on a zero period.
        self.poll = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets how long a changed file must keep its content before a poll loads it (default
    /// 300 ms).
    #[must_use]
    pub fn settle_for(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Reloads (and republishes, even if unchanged) on every message from `triggers`.
    #[must_use]
    pub fn reload_on(mut self, triggers: mpsc::Receiver<()>) -> Self {
        self.triggers = Some(triggers);
        self
    }

    /// Returns a receiver of the current spec, updated on each successful reload.
    pub fn subscribe(&self) -> watch::Receiver<Arc<T>> {
        self.spec.subscribe()
    }

    /// Returns a receiver of the last rejected reload's error, `None` after a successful one.
    pub fn last_error(&self) -> watch::Receiver<Option<String>> {
        self.last_error.subscribe()
    }

    /// Polls and reloads until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut poll = tokio::time::interval_at(Instant::now() + self.poll, self.poll);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let settle = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                trigger = next_trigger(&mut self.triggers), if self.triggers.is_some() => {
                    match trigger {
                        Some(()) => self.reload(Cause::Trigger).await,
                        None => self.triggers = None,
                    }
                }
                () = &mut settle, if self.settling.is_some() => self.reload(Cause::Poll).await,
                _ = poll.tick() => self.reload(Cause::Poll).await,
            }
            if self.settling.is_some() {
                settle.as_mut().reset(Instant::now() + self.settle);
            }
        }
    }

    async fn reload(&mut self, cause: Cause) {
        let path = self.path.clone();
        let read = match tokio::task::spawn_blocking(move || hash_file(&path)).await {
            Ok(read) => read,
            Err(err) => return self.reject(cause, &format!("reading the spec failed: {err}")),
        };
        let seen = Fingerprint::of(&read);
        if cause == Cause::Poll {
            if seen == self.seen {
                self.settling = None;
                return;
            }
            // Changed: load only once it stopped changing (a complete write).
            if self.settling != Some(seen) {
                self.settling = Some(seen);
                return;
            }
        }
        self.settling = None;
        self.seen = seen;
        if let Err(err) = read {
            let message = format!("cannot read {}: {err}", self.path.display());
            return self.reject(cause, &message);
        }
        let path = self.path.clone();
        let loader = Arc::clone(&self.loader);
        let current = Arc::clone(&self.spec.borrow());
        let load = tokio::task::spawn_blocking(move || loader(&path, Some(&current)));
        let Ok(loaded) = tokio::time::timeout(LOAD_TIMEOUT, load).await else {
            let message = format!(
                "loading the spec took longer than {}s: rejected",
                LOAD_TIMEOUT.as_secs()
            );
            return self.reject(cause, &message);
        };
        match loaded {
            Ok(Ok(spec)) => {
                info!(path = %self.path.display(), %cause, "spec reloaded");
                self.spec.send_replace(Arc::new(spec));
                self.last_error.send_replace(None);
            }
            Ok(Err(message)) => self.reject(cause, &message),
            Err(err) => self.reject(cause, &format!("the spec loader panicked: {err}")),
        }
    }

    fn reject(&self, cause: Cause, message: &str) {
        for line in message.lines().filter(|line| !line.trim().is_empty()) {
            error!(
                path = %self.path.display(),
                %cause,
                error = line,
                "spec rejected, keeping the previous one"
            );
        }
        self.last_error.send_replace(Some(message.to_owned()));
    }
}

/// Receives the next trigger, or waits forever without a channel (the `select!` guard disables it).
async fn next_trigger(triggers: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match triggers {
        Some(triggers) => triggers.recv().await,
        None => std::future::pending().await,
    }
}

/// Hashes the file's bytes; the hasher's fixed keys make equal bytes give equal hashes.
fn hash_file(path: &Path) -> io::Result<u64> {
    let bytes = std::fs::read(path)?;
    let mut hasher = DefaultHasher::new();
    hasher.write(&bytes);
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::task::JoinHandle;
    use tokio::time::{sleep, timeout};

    use super::*;

    const POLL: Duration = Duration::from_secs(2);
    const WITHIN: Duration = Duration::from_secs(60);

    /// Parses a number; anything else is two errors on two lines, like the real spec loader.
    fn load_number(path: &Path) -> Result<u32, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        text.trim().parse().map_err(|_| {
            format!(
                "spec.yaml:1:1: not a number\nspec.yaml:1:1: `{}`",
                text.trim()
            )
        })
    }

    struct Setup {
        _dir: tempfile::TempDir,
        path: PathBuf,
        spec: watch::Receiver<Arc<u32>>,
        errors: watch::Receiver<Option<String>>,
        loads: Arc<AtomicUsize>,
        trigger: mpsc::Sender<()>,
        shutdown: CancellationToken,
        run: JoinHandle<()>,
    }

    fn start(initial: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.yaml");
        std::fs::write(&path, initial).unwrap();
        let loads = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&loads);
        let (trigger, triggers) = mpsc::channel(1);
        let reloader = SpecReloader::open(&path, move |p: &Path, _: Option<&u32>| {
            counter.fetch_add(1, Ordering::SeqCst);
            load_number(p)
        })
        .unwrap()
        .poll_every(POLL)
        .reload_on(triggers);
        let spec = reloader.subscribe();
        let errors = reloader.last_error();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(reloader.run(shutdown.clone()));
        Setup {
            _dir: dir,
            path,
            spec,
            errors,
            loads,
            trigger,
            shutdown,
            run,
        }
    }

    impl Setup {
        async fn stop(self) {
            self.shutdown.cancel();
            timeout(WITHIN, self.run).await.unwrap().unwrap();
        }
    }

    #[test]
    fn open_should_fail_on_an_invalid_initial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.yaml");
        std::fs::write(&path, "nope").unwrap();
        let err =
            SpecReloader::open(&path, |p: &Path, _: Option<&u32>| load_number(p)).unwrap_err();
        assert!(err.contains("not a number"));
    }

    #[tokio::test(start_paused = true)]
    async fn reloader_should_publish_a_changed_valid_file() {
        let mut s = start("1");
        assert_eq!(**s.spec.borrow_and_update(), 1);
        std::fs::write(&s.path, "2").unwrap();
        timeout(WITHIN, s.spec.changed()).await.unwrap().unwrap();
        assert_eq!(**s.spec.borrow_and_update(), 2);
        assert_eq!(*s.errors.borrow(), None);
        s.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn reloader_should_load_only_a_write_that_stopped_changing() {
        let mut s = start("1");
        s.spec.borrow_and_update();
        let loads = s.loads.load(Ordering::SeqCst);
        // The first half of a save ("2" of "23") is seen by a poll...
        std::fs::write(&s.path, "2").unwrap();
        sleep(POLL + Duration::from_millis(100)).await;
        assert_eq!(s.loads.load(Ordering::SeqCst), loads, "not loaded yet");
        // ...and the save completes before the settle time is over.
        std::fs::write(&s.path, "23").unwrap();
        timeout(WITHIN, s.spec.changed()).await.unwrap().unwrap();
        assert_eq!(
            **s.spec.borrow_and_update(),
            23,
            "the complete write, never `2`"
        );
        assert_eq!(s.loads.load(Ordering::SeqCst), loads + 1, "loaded once");
        s.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_loader_should_judge_a_reload_against_the_spec_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.yaml");
        std::fs::write(&path, "5").unwrap();
        // Refuses to go down, as the real loader refuses to drop every repository.
        let reloader = SpecReloader::open(&path, |p: &Path, current: Option<&u32>| {
            let n = load_number(p)?;
            match current {
                Some(c) if n < *c => Err(format!("spec.yaml:1:1: {n} is below {c}")),
                _ => Ok(n),
            }
        })
        .unwrap();
        let mut spec = reloader.subscribe();
        let mut errors = reloader.last_error();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(reloader.run(shutdown.clone()));
        std::fs::write(&path, "3").unwrap();
        timeout(WITHIN, errors.changed()).await.unwrap().unwrap();
        assert_eq!(
            errors.borrow_and_update().as_deref(),
            Some("spec.yaml:1:1: 3 is below 5")
        );
        std::fs::write(&path, "7").unwrap();
        timeout(WITHIN, spec.changed()).await.unwrap().unwrap();
        assert_eq!(**spec.borrow_and_update(), 7);
        shutdown.cancel();
        timeout(WITHIN, run).await.unwrap().unwrap();
    }

    // Real time: tokio's paused clock does not advance while a blocking task runs, and the
    // point is that the reloader stops waiting for one.
    #[tokio::test]
    async fn a_load_that_takes_longer_than_a_second_should_be_rejected_without_waiting_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.yaml");
        std::fs::write(&path, "1").unwrap();
        // The second load blocks until the test lets it go: a parser stuck on a hostile file.
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let stuck = std::sync::Mutex::new(stuck);
        let reloader = SpecReloader::open(&path, move |p: &Path, current: Option<&u32>| {
            if current.is_some() {
                let _ = stuck.lock().unwrap().recv();
            }
            load_number(p)
        })
        .unwrap();
        let (trigger, triggers) = mpsc::channel(1);
        let reloader = reloader.reload_on(triggers);
        let spec = reloader.subscribe();
        let mut errors = reloader.last_error();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(reloader.run(shutdown.clone()));
        std::fs::write(&path, "2").unwrap();
        trigger.send(()).await.unwrap();
        timeout(WITHIN, errors.changed()).await.unwrap().unwrap();
        let error = errors.borrow_and_update().clone().unwrap();
        assert_eq!(error, "loading the spec took longer than 1s: rejected");
        assert_eq!(**spec.borrow(), 1, "the old spec stays");
        release.send(()).unwrap();
        shutdown.cancel();
        timeout(WITHIN, run).await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn reloader_should_ignore_an_unchanged_file_on_poll() {
        let s = start("1");
        let loads = s.loads.load(Ordering::SeqCst);
        // Rewritten with the same bytes: a new mtime, the same content.
        std::fs::write(&s.path, "1").unwrap();
        sleep(POLL * 5).await;
        assert!(!s.spec.has_changed().unwrap());
        assert_eq!(
            s.loads.load(Ordering::SeqCst),
            loads,
            "not even parsed again"
        );
        s.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn reloader_should_reject_an_invalid_file_and_keep_the_old_spec() {
        let mut s = start("1");
        std::fs::write(&s.path, "one").unwrap();
        timeout(WITHIN, s.errors.changed()).await.unwrap().unwrap();
        let error = s.errors.borrow_and_update().clone().unwrap();
        assert_eq!(error, "spec.yaml:1:1: not a number\nspec.yaml:1:1: `one`");
        assert_eq!(**s.spec.borrow(), 1, "the old spec stays");
        assert!(!s.spec.has_changed().unwrap());
        let loads = s.loads.load(Ordering::SeqCst);
        sleep(POLL * 5).await;
        assert_eq!(
            s.loads.load(Ordering::SeqCst),
            loads,
            "rejected once, not every poll"
        );

        std::fs::write(&s.path, "3").unwrap();
        timeout(WITHIN, s.spec.changed()).await.unwrap().unwrap();
        assert_eq!(**s.spec.borrow_and_update(), 3);
        assert_eq!(*s.errors.borrow(), None, "a good reload clears the error");
        s.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn reloader_should_keep_the_old_spec_when_the_file_vanishes() {
        let mut s = start("1");
        std::fs::remove_file(&s.path).unwrap();
        timeout(WITHIN, s.errors.changed()).await.unwrap().unwrap();
        assert!(s.errors.borrow().as_ref().unwrap().contains("cannot read"));
        assert_eq!(**s.spec.borrow(), 1);
        std::fs::write(&s.path, "1").unwrap();
        timeout(WITHIN, s.spec.changed()).await.unwrap().unwrap();
        assert_eq!(**s.spec.borrow_and_update(), 1);
        s.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn reload_trigger_should_republish_an_unchanged_spec() {
        let mut s = start("1");
        s.spec.borrow_and_update();
        s.trigger.send(()).await.unwrap();
        timeout(WITHIN, s.spec.changed()).await.unwrap().unwrap();
        assert_eq!(**s.spec.borrow_and_update(), 1);
        s.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn reload_trigger_should_keep_the_old_spec_when_the_file_is_invalid() {
        let mut s = start("1");
        std::fs::write(&s.path, "x").unwrap();
        s.trigger.send(()).await.unwrap();
        timeout(WITHIN, s.errors.changed()).await.unwrap().unwrap();
        assert!(s.errors.borrow().is_some());
        assert_eq!(**s.spec.borrow(), 1);
        assert!(!s.spec.has_changed().unwrap());
        s.stop().await;
    }
}
