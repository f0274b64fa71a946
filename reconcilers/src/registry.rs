//! The loop registry: the one list of the daemon's loops.
//!
//! `reconix serve` starts a controller for each loop (and so registers its metrics and records
//! its health rows, which `/loops` shows), `reconix plan` prints each loop's plans; both walk
//! this list with a [`LoopVisitor`]. Adding a loop means adding one line to [`visit_loops`].
//!
//! A visitor rather than a list of trait objects: [`Reconciler`] has associated types and
//! `impl Future` methods, so it is not object safe, and a visitor keeps each loop statically
//! dispatched.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;

use reconix_spec::Spec;

use crate::builders::BuildersLoop;
use crate::builds::Builds;
use crate::caches::Caches;
use crate::context::{Ctx, Ports};
use crate::error::Error;
use crate::evaluations::Evaluations;
use crate::forges::ForgeHealthLoop;
use crate::gcroots::GcRoots;
use crate::heads::Heads;
use crate::retention::Retention;
use crate::runtime::{Handle, Reconciler};
use crate::statuses::Statuses;
use crate::webhooks::Webhooks;

/// A loop of the daemon: a [`Reconciler`] of the production spec over the shared [`Ctx`],
/// failing with the loops' [`Error`] (whose [`kind`](Error::kind) the error policy decides on).
pub trait Loop<P: Ports>: Reconciler<Spec = Spec, Context = Ctx<P>, Error = Error> {}

impl<P: Ports, R: Reconciler<Spec = Spec, Context = Ctx<P>, Error = Error>> Loop<P> for R {}

/// Does something with each loop type; see [`visit_loops`].
pub trait LoopVisitor<P: Ports> {
    /// Receives a new instance of one loop.
    fn visit<R: Loop<P>>(&mut self, reconciler: R);
}

/// Calls `visitor` once for every loop of the daemon, in a fixed order (the order `reconix
/// plan` prints them in).
pub fn visit_loops<P: Ports>(visitor: &mut impl LoopVisitor<P>) {
    visitor.visit(Evaluations::<P>::new());
    visitor.visit(Builds::<P>::new());
    visitor.visit(GcRoots::<P>::new());
    visitor.visit(Heads::<P>::new());
    visitor.visit(Webhooks::<P>::new());
    visitor.visit(Statuses::<P>::new());
    visitor.visit(ForgeHealthLoop::<P>::new());
    visitor.visit(BuildersLoop::<P>::new());
    visitor.visit(Caches::<P>::new());
    visitor.visit(Retention::<P>::new());
}

/// Returns the [`Reconciler::NAME`] of every loop, in the order of [`visit_loops`].
pub fn loop_names<P: Ports>() -> Vec<&'static str> {
    struct Names(Vec<&'static str>);
    impl<P: Ports> LoopVisitor<P> for Names {
        fn visit<R: Loop<P>>(&mut self, _: R) {
            self.0.push(R::NAME);
        }
    }
    let mut names = Names(Vec::new());
    visit_loops::<P>(&mut names);
    names.0
}

/// The [`Handle`]s of the running loops, by loop type, for wiring the wakers once every
/// controller exists.
#[derive(Default)]
pub struct Handles {
    by_loop: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Handles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handles")
            .field("loops", &self.by_loop.len())
            .finish()
    }
}

impl Handles {
    /// Keeps the handle of loop `R`, replacing an earlier one.
    pub fn insert<R: Reconciler>(&mut self, handle: Handle<R::Key>) {
        self.by_loop.insert(TypeId::of::<R>(), Box::new(handle));
    }

    /// Returns the handle of loop `R`, or `None` when it was not inserted.
    pub fn get<R: Reconciler>(&self) -> Option<Handle<R::Key>> {
        self.by_loop
            .get(&TypeId::of::<R>())
            .and_then(|h| h.downcast_ref::<Handle<R::Key>>())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use reconix_nixcli::FakeNix;

    use super::*;
    use crate::LivePorts;
    use crate::runtime::Action;

    type Test = LivePorts<FakeNix>;

    #[test]
    fn every_loop_should_be_registered_once_under_its_own_name() {
        let names = loop_names::<Test>();
        let unique: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "a name twice in {names:?}");
        assert_eq!(
            names,
            [
                "evaluations",
                "builds",
                "gcroots",
                "heads",
                "webhooks",
                "statuses",
                "forges",
                "builders",
                "caches",
                "retention"
            ]
        );
    }

    #[test]
    fn every_loop_should_retry_by_the_kind_of_its_error() {
        struct Policies(Vec<(&'static str, [Action; 3])>);
        impl LoopVisitor<Test> for Policies {
            fn visit<R: Loop<Test>>(&mut self, _: R) {
                let unauthorized = Error::Forge {
                    forge: "gh".to_owned(),
                    source: reconix_forge::ApiError::Unauthorized {
                        method: "GET".to_owned(),
                        path: "/".to_owned(),
                    },
                };
                let git = Error::Git {
                    path: "/repo".into(),
                    message: "locked".to_owned(),
                };
                self.0.push((
                    R::NAME,
                    [
                        R::error_policy(&git, 2),
                        R::error_policy(&unauthorized, 1),
                        R::error_policy(&Error::config("k", "left the spec"), 1),
                    ],
                ));
            }
        }
        let mut policies = Policies(Vec::new());
        visit_loops(&mut policies);
        for (name, actions) in policies.0 {
            assert_eq!(
                actions,
                [
                    Action::requeue(Duration::from_secs(2)),
                    Action::requeue(Duration::from_secs(300)),
                    Action::await_change()
                ],
                "{name}"
            );
        }
    }

    #[test]
    fn handles_should_be_found_by_loop_type() {
        let (_tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(Spec::default()));
        let controller = crate::runtime::Controller::new(
            std::sync::Arc::new(Heads::<Test>::new()),
            std::sync::Arc::new(Ctx::new(
                LivePorts::new(FakeNix::new()),
                reconix_status::Status::new(reconix_status::StatusDb::open_memory().unwrap()),
                rx.clone(),
            )),
            rx,
        );
        let mut handles = Handles::default();
        handles.insert::<Heads<Test>>(controller.handle());
        assert!(handles.get::<Heads<Test>>().is_some());
        assert!(handles.get::<Statuses<Test>>().is_none());
    }
}
