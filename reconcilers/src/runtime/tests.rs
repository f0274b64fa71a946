//! Runtime guarantees, one test each, on a toy reconciler under tokio's paused clock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reconix_spec::Timestamp;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

use super::*;

/// Long enough for anything that should finish, short enough to fail fast when it hangs.
const WITHIN: Duration = Duration::from_secs(3600);
const FOREVER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
struct ToySpec {
    keys: Vec<&'static str>,
    steps: usize,
    then: Action,
    version: u32,
}

impl ToySpec {
    fn keys(keys: &[&'static str]) -> Self {
        Self {
            keys: keys.to_vec(),
            steps: 1,
            then: Action::await_change(),
            version: 1,
        }
    }

    fn then(mut self, then: Action) -> Self {
        self.then = then;
        self
    }

    fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Touch {
    key: String,
    index: usize,
    /// The plan's last step: the toy counts the key as running until it is applied.
    last: bool,
    now: Timestamp,
}

#[derive(Debug, thiserror::Error)]
enum ToyError {
    #[error("listing failed")]
    Keys,
    #[error("observe failed")]
    Observe,
    #[error("apply failed")]
    Apply(#[source] std::io::Error),
}

/// What a test scripts for one call of a key: succeed, fail or panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Fail,
    Panic,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// Observe of a key at a whole second since the test started, seeing a spec version.
    Observe(String, u64, u32),
    Applied(Touch),
}

#[derive(Debug)]
struct Toy {
    start: Instant,
    events: Mutex<Vec<Event>>,
    /// Apply waits for one permit per step when set.
    gate: Option<Arc<Semaphore>>,
    /// Scripted outcomes per key, consumed one per observe; empty means success.
    observe_script: Mutex<HashMap<String, VecDeque<Script>>>,
    /// Fails the step with this index.
    fail_step: Option<usize>,
    /// How many of the next `keys()` calls fail.
    keys_failures: AtomicU32,
    /// Keys listed in addition to the spec's.
    extra_keys: Mutex<Vec<String>>,
    running: Mutex<HashSet<String>>,
    /// Set when a key was observed while already running.
    overlap: Mutex<bool>,
    max_running: Mutex<usize>,
}

impl Toy {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            events: Mutex::default(),
            gate: None,
            observe_script: Mutex::default(),
            fail_step: None,
            keys_failures: AtomicU32::new(0),
            extra_keys: Mutex::default(),
            running: Mutex::default(),
            overlap: Mutex::new(false),
            max_running: Mutex::new(0),
        }
    }

    fn gated(mut self, gate: &Arc<Semaphore>) -> Self {
        self.gate = Some(Arc::clone(gate));
        self
    }

    fn script(self, key: &str, script: &[Script]) -> Self {
        self.observe_script
            .lock()
            .unwrap()
            .insert(key.to_owned(), script.iter().copied().collect());
        self
    }

    fn observed(&self, key: &str) -> Vec<u64> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Observe(k, at, _) if k == key => Some(*at),
                _ => None,
            })
            .collect()
    }

    fn applied(&self) -> Vec<Touch> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Applied(touch) => Some(touch.clone()),
                Event::Observe(..) => None,
            })
            .collect()
    }

    fn running(&self) -> usize {
        self.running.lock().unwrap().len()
    }

    fn done(&self, key: &str) {
        self.running.lock().unwrap().remove(key);
    }
}

impl Reconciler for Toy {
    const NAME: &'static str = "toys";
    type Spec = ToySpec;
    type Context = ();
    type Key = String;
    type Observed = u32;
    type Step = Touch;
    type Error = ToyError;

    async fn keys(&self, spec: &ToySpec, _cx: &()) -> Result<Vec<String>, ToyError> {
        let failing = self
            .keys_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(ToyError::Keys);
        }
        let mut keys: Vec<String> = spec.keys.iter().map(|k| (*k).to_owned()).collect();
        keys.extend(self.extra_keys.lock().unwrap().iter().cloned());
        Ok(keys)
    }

    async fn observe(&self, key: &String, spec: &ToySpec, _cx: &()) -> Result<u32, ToyError> {
        let at = self.start.elapsed().as_secs();
        self.events
            .lock()
            .unwrap()
            .push(Event::Observe(key.clone(), at, spec.version));
        {
            let mut running = self.running.lock().unwrap();
            if !running.insert(key.clone()) {
                *self.overlap.lock().unwrap() = true;
            }
            let mut max = self.max_running.lock().unwrap();
            *max = (*max).max(running.len());
        }
        let script = self
            .observe_script
            .lock()
            .unwrap()
            .get_mut(key)
            .and_then(VecDeque::pop_front);
        match script {
            Some(Script::Fail) => {
                self.done(key);
                Err(ToyError::Observe)
            }
            Some(Script::Panic) => {
                self.done(key);
                panic!("scripted panic")
            }
            None => Ok(spec.version),
        }
    }

    fn plan(key: &String, desired: &ToySpec, _observed: &u32, now: Timestamp) -> Plan<Touch> {
        Plan {
            steps: (0..desired.steps)
                .map(|index| Touch {
                    key: key.clone(),
                    index,
                    last: index + 1 == desired.steps,
                    now,
                })
                .collect(),
            then: desired.then,
        }
    }

    async fn apply(&self, key: &String, step: Touch, _cx: &()) -> Result<(), ToyError> {
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        let last = step.last;
        let failed = self.fail_step == Some(step.index);
        if !failed {
            self.events.lock().unwrap().push(Event::Applied(step));
        }
        if last || failed {
            self.done(key);
        }
        if failed {
            return Err(ToyError::Apply(std::io::Error::other("disk on fire")));
        }
        Ok(())
    }
}

struct Harness {
    toy: Arc<Toy>,
    handle: Handle<String>,
    spec: watch::Sender<Arc<ToySpec>>,
    shutdown: CancellationToken,
    run: JoinHandle<()>,
    reports: Arc<Mutex<Vec<RunReport>>>,
}

impl Harness {
    fn start(toy: Toy, spec: ToySpec) -> Self {
        Self::start_with(toy, spec, |c| c)
    }

    fn start_with(
        toy: Toy,
        spec: ToySpec,
        configure: impl FnOnce(Controller<Toy>) -> Controller<Toy>,
    ) -> Self {
        let toy = Arc::new(toy);
        let (spec_tx, spec_rx) = watch::channel(Arc::new(spec));
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&reports);
        let controller = configure(
            Controller::new(Arc::clone(&toy), Arc::new(()), spec_rx)
                .resync_every(FOREVER)
                .on_report(move |r| sink.lock().unwrap().push(r.clone())),
        );
        let handle = controller.handle();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(controller.run(shutdown.clone()));
        Self {
            toy,
            handle,
            spec: spec_tx,
            shutdown,
            run,
            reports,
        }
    }

    fn reports(&self) -> Vec<RunReport> {
        self.reports.lock().unwrap().clone()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        timeout(WITHIN, self.run).await.unwrap().unwrap();
    }
}

/// Lets every runnable task run; moves the paused clock by 1 ms.
async fn settle() {
    sleep(Duration::from_millis(1)).await;
}

/// Sleeps until `secs` after `start` (plus half a second, off any timer's instant).
async fn sleep_until_secs(start: Instant, secs: u64) {
    tokio::time::sleep_until(start + Duration::from_millis(secs * 1000 + 500)).await;
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(start_paused = true)]
async fn controller_should_run_the_earliest_requested_time_once() {
    let h = Harness::start(
        Toy::new(),
        ToySpec::keys(&["a"]).then(Action::requeue(secs(60))),
    );
    let start = h.toy.start;
    settle().await;
    sleep_until_secs(start, 10).await;
    for _ in 0..3 {
        h.handle.trigger("a".to_owned());
    }
    sleep_until_secs(start, 75).await;
    // The trigger at 10 s beats the requeue at 60 s; the run at 10 s requeues at 70 s.
    assert_eq!(h.toy.observed("a"), [0, 10, 70]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn trigger_during_a_reconcile_should_yield_exactly_one_follow_up_run() {
    let gate = Arc::new(Semaphore::new(0));
    let h = Harness::start(Toy::new().gated(&gate), ToySpec::keys(&["a"]));
    settle().await;
    assert_eq!(h.toy.observed("a"), [0], "first run holds the gate");
    for _ in 0..5 {
        h.handle.trigger("a".to_owned());
        settle().await;
    }
    assert_eq!(
        h.toy.observed("a").len(),
        1,
        "no second run while the first holds"
    );
    gate.add_permits(1);
    settle().await;
    assert_eq!(h.toy.observed("a").len(), 2, "one follow-up run, at once");
    gate.add_permits(10);
    sleep(secs(600)).await;
    assert_eq!(h.toy.observed("a").len(), 2, "and only one");
    assert!(!*h.toy.overlap.lock().unwrap());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn controller_should_never_reconcile_the_same_key_concurrently() {
    let gate = Arc::new(Semaphore::new(0));
    let h = Harness::start_with(Toy::new().gated(&gate), ToySpec::keys(&["a"]), |c| {
        c.resync_every(secs(10)).concurrency(4)
    });
    settle().await;
    // Every kind of request while `a` is held: trigger, trigger_all, resync, spec change.
    h.handle.trigger("a".to_owned());
    h.handle.trigger_all();
    sleep(secs(25)).await;
    h.spec.send_modify(|s| {
        *s = Arc::new(ToySpec {
            version: 2,
            ..(**s).clone()
        })
    });
    settle().await;
    assert_eq!(h.toy.observed("a").len(), 1);
    assert_eq!(h.toy.running(), 1);
    gate.add_permits(100);
    settle().await;
    assert!(!*h.toy.overlap.lock().unwrap());
    assert_eq!(*h.toy.max_running.lock().unwrap(), 1);
    assert_eq!(
        h.toy.observed("a").len(),
        2,
        "all of them became one follow-up"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn different_keys_should_run_concurrently_up_to_the_limit() {
    let gate = Arc::new(Semaphore::new(0));
    let keys = ["a", "b", "c", "d", "e"];
    let h = Harness::start_with(Toy::new().gated(&gate), ToySpec::keys(&keys), |c| {
        c.concurrency(2)
    });
    settle().await;
    assert_eq!(h.toy.running(), 2, "two keys run at once");
    let started = |h: &Harness| {
        keys.iter()
            .filter(|k| !h.toy.observed(k).is_empty())
            .count()
    };
    assert_eq!(started(&h), 2);
    gate.add_permits(1);
    settle().await;
    assert_eq!(
        started(&h),
        3,
        "a finished run frees its slot for the next key"
    );
    assert_eq!(h.toy.running(), 2);
    gate.add_permits(10);
    settle().await;
    assert_eq!(started(&h), 5);
    assert_eq!(*h.toy.max_running.lock().unwrap(), 2);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn requeue_should_rerun_after_the_delay_and_not_before() {
    let h = Harness::start(
        Toy::new(),
        ToySpec::keys(&["a"]).then(Action::requeue(secs(30))),
    );
    let start = h.toy.start;
    sleep_until_secs(start, 29).await;
    assert_eq!(h.toy.observed("a"), [0]);
    sleep_until_secs(start, 30).await;
    assert_eq!(h.toy.observed("a"), [0, 30]);
    sleep_until_secs(start, 61).await;
    assert_eq!(h.toy.observed("a"), [0, 30, 60]);
    assert_eq!(h.reports()[0].next_run, Some(secs(30)));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn await_change_should_not_rerun_until_triggered() {
    let h = Harness::start(Toy::new(), ToySpec::keys(&["a"]));
    let start = h.toy.start;
    sleep_until_secs(start, 3600).await;
    assert_eq!(h.toy.observed("a"), [0]);
    assert_eq!(h.reports()[0].next_run, None);
    h.handle.trigger("a".to_owned());
    settle().await;
    assert_eq!(h.toy.observed("a"), [0, 3600]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn errors_should_back_off_exponentially_and_reset_after_success() {
    use Script::Fail;
    let toy = Toy::new().script("a", &[Fail, Fail, Fail /* ok */]);
    let h = Harness::start(toy, ToySpec::keys(&["a"]));
    let start = h.toy.start;
    sleep_until_secs(start, 100).await;
    // Fails at 0, retried after 1 s, 2 s, 4 s; succeeds at 7 s and awaits a change.
    assert_eq!(h.toy.observed("a"), [0, 1, 3, 7]);
    h.toy
        .observe_script
        .lock()
        .unwrap()
        .insert("a".to_owned(), [Fail].into());
    h.handle.trigger("a".to_owned());
    sleep_until_secs(start, 200).await;
    assert_eq!(
        h.toy.observed("a"),
        [0, 1, 3, 7, 100, 101],
        "backoff restarts at 1 s"
    );
    let reports = h.reports();
    let failures: Vec<u32> = reports.iter().map(|r| r.failures).collect();
    assert_eq!(failures, [1, 2, 3, 0, 1, 0]);
    let next: Vec<_> = reports.iter().map(|r| r.next_run).collect();
    assert_eq!(
        next,
        [
            Some(secs(1)),
            Some(secs(2)),
            Some(secs(4)),
            None,
            Some(secs(1)),
            None
        ]
    );
    assert_eq!(reports[0].outcome, Err("observe failed".to_owned()));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_reconcile_should_be_retried_without_stopping_the_loop() {
    let toy = Toy::new().script("a", &[Script::Panic]);
    let h = Harness::start(toy, ToySpec::keys(&["a", "b"]));
    let start = h.toy.start;
    sleep_until_secs(start, 10).await;
    assert_eq!(
        h.toy.observed("a"),
        [0, 1],
        "retried after the first backoff"
    );
    assert_eq!(h.toy.observed("b"), [0]);
    let panicked = h
        .reports()
        .into_iter()
        .find(|r| r.outcome.is_err())
        .unwrap();
    assert!(panicked.outcome.unwrap_err().contains("panicked"));
    assert!(!h.run.is_finished());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn resync_should_relist_and_rerun_every_key_periodically() {
    let h = Harness::start_with(Toy::new(), ToySpec::keys(&["a", "b"]), |c| {
        c.resync_every(secs(60))
    });
    let start = h.toy.start;
    sleep_until_secs(start, 59).await;
    assert_eq!(h.toy.observed("a"), [0]);
    h.toy.extra_keys.lock().unwrap().push("c".to_owned());
    sleep_until_secs(start, 60).await;
    assert_eq!(h.toy.observed("a"), [0, 60]);
    assert_eq!(h.toy.observed("b"), [0, 60]);
    assert_eq!(h.toy.observed("c"), [60], "the resync lists keys again");
    sleep_until_secs(start, 120).await;
    assert_eq!(h.toy.observed("a"), [0, 60, 120]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn trigger_all_should_relist_and_run_every_key() {
    let h = Harness::start(Toy::new(), ToySpec::keys(&["a"]));
    let start = h.toy.start;
    sleep_until_secs(start, 5).await;
    h.toy.extra_keys.lock().unwrap().push("b".to_owned());
    h.handle.trigger_all();
    settle().await;
    assert_eq!(h.toy.observed("a"), [0, 5]);
    assert_eq!(h.toy.observed("b"), [5]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn spec_change_should_rerun_every_key_with_the_new_spec() {
    let h = Harness::start(Toy::new(), ToySpec::keys(&["a", "b"]));
    let start = h.toy.start;
    sleep_until_secs(start, 5).await;
    h.spec.send_replace(Arc::new(ToySpec {
        version: 2,
        ..ToySpec::keys(&["a", "b", "c"])
    }));
    settle().await;
    let events = h.toy.events.lock().unwrap().clone();
    let observes: Vec<_> = events
        .into_iter()
        .filter(|e| matches!(e, Event::Observe(..)))
        .collect();
    assert_eq!(
        observes,
        [
            Event::Observe("a".into(), 0, 1),
            Event::Observe("b".into(), 0, 1),
            Event::Observe("a".into(), 5, 2),
            Event::Observe("b".into(), 5, 2),
            Event::Observe("c".into(), 5, 2),
        ]
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn keys_error_should_not_stop_the_controller() {
    let toy = Toy::new();
    toy.keys_failures.store(1, Ordering::SeqCst);
    let h = Harness::start_with(toy, ToySpec::keys(&["a"]), |c| c.resync_every(secs(60)));
    let start = h.toy.start;
    sleep_until_secs(start, 10).await;
    assert!(h.toy.observed("a").is_empty(), "the first listing failed");
    assert!(!h.run.is_finished());
    h.handle.trigger("b".to_owned());
    settle().await;
    assert_eq!(h.toy.observed("b"), [10], "triggers still work");
    sleep_until_secs(start, 60).await;
    assert_eq!(h.toy.observed("a"), [60], "the next resync lists again");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn on_listed_should_tell_how_many_keys_each_successful_listing_found() {
    let listed = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&listed);
    let toy = Toy::new();
    toy.keys_failures.store(1, Ordering::SeqCst);
    let h = Harness::start_with(toy, ToySpec::keys(&[]), move |c| {
        c.on_listed(move |n| sink.lock().unwrap().push(n))
    });
    settle().await;
    assert!(
        listed.lock().unwrap().is_empty(),
        "a failed listing is not told"
    );
    h.handle.trigger_all();
    settle().await;
    assert_eq!(*listed.lock().unwrap(), [0]);
    h.toy.extra_keys.lock().unwrap().push("x".to_owned());
    h.handle.trigger_all();
    settle().await;
    assert_eq!(*listed.lock().unwrap(), [0, 1]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_should_let_the_in_flight_step_finish_then_return() {
    let gate = Arc::new(Semaphore::new(0));
    let h = Harness::start(Toy::new().gated(&gate), ToySpec::keys(&["a"]).steps(2));
    settle().await;
    assert_eq!(h.toy.running(), 1);
    h.shutdown.cancel();
    h.handle.trigger("b".to_owned());
    let mut run = h.run;
    assert!(
        timeout(secs(60), &mut run).await.is_err(),
        "run() waits for the step being applied"
    );
    gate.add_permits(10);
    timeout(WITHIN, run).await.unwrap().unwrap();
    let applied: Vec<usize> = h.toy.applied().iter().map(|t| t.index).collect();
    assert_eq!(
        applied,
        [0],
        "the step in progress finished, the next was left"
    );
    assert!(
        h.toy.observed("b").is_empty(),
        "nothing new starts after cancel"
    );
    let reports = h.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].steps_applied, 1);
    assert_eq!(reports[0].outcome, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn a_failing_step_should_stop_the_remaining_steps() {
    let toy = Toy {
        fail_step: Some(1),
        ..Toy::new()
    };
    let h = Harness::start(toy, ToySpec::keys(&["a"]).steps(3));
    settle().await;
    let applied: Vec<usize> = h.toy.applied().iter().map(|t| t.index).collect();
    assert_eq!(applied, [0]);
    let report = h.reports()[0].clone();
    assert_eq!(report.steps_applied, 1);
    assert_eq!(
        report.outcome,
        Err("apply failed: disk on fire".to_owned()),
        "the message carries the error's causes"
    );
    assert_eq!(report.failures, 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn plan_should_see_the_injected_clock_and_reports_should_describe_the_run() {
    let h = Harness::start_with(
        Toy::new(),
        ToySpec::keys(&["a"]).then(Action::requeue(secs(10))),
        |c| c.clock(Clock::tokio_at(Timestamp(1_000_000))),
    );
    sleep(Duration::from_millis(10_500)).await;
    let nows: Vec<Timestamp> = h.toy.applied().iter().map(|t| t.now).collect();
    assert_eq!(nows, [Timestamp(1_000_000), Timestamp(1_010_000)]);
    let report = h.reports()[0].clone();
    assert_eq!(
        report,
        RunReport {
            loop_name: "toys",
            key: "a".to_owned(),
            started: Timestamp(1_000_000),
            duration: Duration::ZERO,
            outcome: Ok(()),
            steps_applied: 1,
            storage_trouble: false,
            failures: 0,
            next_run: Some(secs(10)),
        }
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn dry_run_should_plan_every_key_and_apply_nothing() {
    let toy = Toy::new().script("b", &[Script::Fail]);
    let spec = ToySpec::keys(&["a", "b"]).steps(2);
    let plans = timeout(WITHIN, dry_run(&toy, &spec, &(), Timestamp(42)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plans.len(), 2);
    let (key, plan) = &plans[0];
    assert_eq!(key, "a");
    let plan = plan.as_ref().unwrap();
    assert_eq!(plan.steps.len(), 2);
    assert_eq!(plan.steps[1].now, Timestamp(42));
    assert!(matches!(plans[1], (ref k, Err(ToyError::Observe)) if k == "b"));
    assert!(toy.applied().is_empty());

    toy.keys_failures.store(1, Ordering::SeqCst);
    let listed = timeout(WITHIN, dry_run(&toy, &spec, &(), Timestamp(42)))
        .await
        .unwrap();
    assert!(matches!(listed, Err(ToyError::Keys)));
}
