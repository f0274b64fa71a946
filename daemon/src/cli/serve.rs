//! `reconix serve`: wires the spec reloader, the status database, the loops and the HTTP server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use reconix_nixcli::{Nix, NixCli};
use reconix_reconcilers::builders::BuildersLoop;
use reconix_reconcilers::builds::Builds;
use reconix_reconcilers::caches::Caches;
use reconix_reconcilers::evaluations::Evaluations;
use reconix_reconcilers::gcroots::GcRoots;
use reconix_reconcilers::heads::Heads;
use reconix_reconcilers::registry::{Handles, Loop, LoopVisitor, visit_loops};
use reconix_reconcilers::runtime::{Controller, Reconciler, RunReport, SpecReloader};
use reconix_reconcilers::statuses::Statuses;
use reconix_reconcilers::webhooks::Webhooks;
use reconix_reconcilers::{Ctx, LivePorts, WakerSet};
use reconix_spec::{Spec, SpecErrors, Timestamp};
use reconix_status::{Checkpointer, Metrics, OpenMode, Status, StatusDb};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::SpecArgs;

/// How long shutdown waits for the background tasks (cancelled builds recording how they
/// ended, the last loop-health writes) once the loops and the HTTP server stopped.
const TASKS_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Command-line values that override the spec's own, on start and on every reload.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) listen: Option<SocketAddr>,
}

/// Loads and validates the spec, then applies the command-line overrides.
pub(crate) fn load_spec(path: &Path, overrides: &Overrides) -> Result<Spec, SpecErrors> {
    reload_spec(path, None, overrides)
}

/// Loads the spec as [`load_spec`] does; with `current`, the spec in force, as a reload, which
/// also refuses a spec that would drop every repository ([`reconix_spec::reload`]).
fn reload_spec(
    path: &Path,
    current: Option<&Spec>,
    overrides: &Overrides,
) -> Result<Spec, SpecErrors> {
    let mut spec = match current {
        Some(current) => reconix_spec::reload(path, current)?,
        None => reconix_spec::load(path)?,
    };
    if let Some(dir) = &overrides.state_dir {
        spec.state_dir.clone_from(dir);
    }
    if let Some(listen) = overrides.listen {
        spec.listen = listen;
    }
    Ok(spec)
}

/// Loads the spec of an offline verb (`plan`, `builders`) with its `--state-dir` override;
/// prints every error to stderr and returns `None` when it is invalid.
pub(crate) fn load_spec_or_report(args: &SpecArgs) -> Option<Spec> {
    let overrides = Overrides {
        state_dir: args.state_dir.clone(),
        listen: None,
    };
    match load_spec(&args.spec, &overrides) {
        Ok(spec) => Some(spec),
        Err(errors) => {
            eprintln!("{errors}");
            None
        }
    }
}

/// Returns an error naming the key when `spec` changes what only a restart can change.
fn check_pinned(state_dir: &Path, listen: SocketAddr, spec: &Spec) -> Result<(), String> {
    if spec.state_dir != state_dir {
        return Err(format!(
            "state-dir changed from {} to {}: restart the daemon to use a new state directory",
            state_dir.display(),
            spec.state_dir.display()
        ));
    }
    if spec.listen != listen {
        return Err(format!(
            "listen changed from {listen} to {}: restart the daemon to listen elsewhere",
            spec.listen
        ));
    }
    Ok(())
}

/// Everything `serve` needs; `demo` builds one too.
pub(crate) struct ServeOptions {
    pub(crate) spec_path: PathBuf,
    pub(crate) overrides: Overrides,
    pub(crate) nix_store: Option<String>,
    /// Called once the HTTP socket is bound, with its address and the status handle.
    pub(crate) on_ready: Option<Box<dyn FnOnce(SocketAddr, Status) + Send>>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("spec_path", &self.spec_path)
            .field("overrides", &self.overrides)
            .field("nix_store", &self.nix_store)
            .finish_non_exhaustive()
    }
}

/// Runs `reconix serve` until SIGTERM/SIGINT.
pub(crate) fn run(
    args: &SpecArgs,
    listen: Option<SocketAddr>,
    nix_store: Option<String>,
) -> Result<ExitCode> {
    let opts = ServeOptions {
        spec_path: args.spec.clone(),
        overrides: Overrides {
            state_dir: args.state_dir.clone(),
            listen,
        },
        nix_store,
        on_ready: None,
    };
    runtime()?.block_on(serve(opts))
}

/// Builds the tokio runtime every async verb uses.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Returns the Nix client configured for `--nix-store`.
pub(crate) fn nix_client(store: Option<&str>) -> NixCli {
    let nix = NixCli::new();
    match store {
        Some(store) => nix.with_store(store),
        None => nix,
    }
}

/// Serves until shutdown; returns the exit code.
pub(crate) async fn serve(opts: ServeOptions) -> Result<ExitCode> {
    // First, before any socket or file is open (and before the readiness line is printed).
    let fd_limit = raise_fd_limit();
    let overrides = opts.overrides.clone();
    // The first spec loaded fixes the state directory and listen address: the database and the
    // socket are open, so a reload that changes them is rejected rather than half applied.
    let pinned: OnceLock<(PathBuf, SocketAddr)> = OnceLock::new();
    // A reload is checked against the spec in force, so that an empty or half-written file
    // cannot take every repository away.
    let reloader = match SpecReloader::open(
        opts.spec_path.clone(),
        move |p: &Path, current: Option<&Spec>| {
            let spec = reload_spec(p, current, &overrides).map_err(|e| e.to_string())?;
            let (dir, listen) = pinned.get_or_init(|| (spec.state_dir.clone(), spec.listen));
            check_pinned(dir, *listen, &spec)?;
            Ok::<_, String>(spec)
        },
    ) {
        Ok(reloader) => reloader,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let spec_rx = reloader.subscribe();
    let spec = Arc::clone(&spec_rx.borrow());
    let nix = nix_client(opts.nix_store.as_deref());
    let version = nix.version().await.context(
        "nix is not usable: run `make test`/`make demo` (they install Nix through \
         scripts/install-nix.sh) or `sudo bash scripts/install-nix.sh`",
    )?;
    info!(%version, "found nix");
    let mode = nix
        .suitable_build_mode()
        .await
        .context("reading Nix's configuration")?;
    info!(
        ?mode,
        "build mode (channels unless binary caches are configured)"
    );
    // The evaluator pool is sized once, at start: evaluations hold its workers while they run,
    // so a reload that changes `evaluation.workers` or `max-memory` takes effect at restart.
    let workers = usize::try_from(spec.evaluation.workers_or_cores()).unwrap_or(1);
    info!(
        workers,
        max_memory = %spec.evaluation.max_memory,
        budget = %spec.evaluation.budget(),
        "evaluator pool"
    );
    let nix = nix
        .with_build_mode(mode)
        .with_eval_workers(workers, spec.evaluation.max_memory.0);

    std::fs::create_dir_all(&spec.state_dir)
        .with_context(|| format!("creating state dir {}", spec.state_dir.display()))?;
    let db_path = spec.state_dir.join("reconix.db");
    let status = Status::new(
        StatusDb::open(&db_path, OpenMode::ReadWrite)
            .with_context(|| format!("opening {}", db_path.display()))?,
    );

    let shutdown = CancellationToken::new();
    // The WAL is moved into the database from a second connection, off the write path.
    let checkpointer = Checkpointer::open(&db_path)
        .with_context(|| format!("opening {} for checkpoints", db_path.display()))?;
    reconix_reconcilers::runtime::shutdown_on_signals(shutdown.clone())
        .context("installing signal handlers")?;
    let sighup =
        reconix_reconcilers::runtime::sighup_stream().context("installing the SIGHUP handler")?;
    let reloader = reloader.reload_on(sighup);
    let spec_errors = reloader.last_error();
    let listen = spec.listen;

    // One registry for everything `/metrics` serves: the loops' runs, builds, forge calls and
    // webhook deliveries.
    let metrics = Metrics::new();
    let ctx = Arc::new(
        Ctx::new(LivePorts::new(nix), status.clone(), spec_rx.clone())
            .with_metrics(metrics.clone()),
    );
    // Every task spawned from here on is tracked in `ctx.tasks`: shutdown waits for them.
    ctx.tasks
        .spawn(checkpointer.run_until(std::time::Duration::from_secs(1), {
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        }));
    // One controller per registered loop; they start running below, once the wakers are set.
    let mut loops = Loops {
        ctx: &ctx,
        spec: &spec_rx,
        status: &status,
        metrics: &metrics,
        shutdown: &shutdown,
        handles: Handles::default(),
        runs: Vec::new(),
    };
    visit_loops(&mut loops);
    ctx.wakers.set_all(waker_set(&loops.handles)?);

    if let Some(enrollment) = &spec.builders.enrollment {
        let key = reconix_agent::coordinator::CoordinatorKey::load_or_create(&spec.state_dir)
            .context("loading the coordinator key")?;
        // Read at start, like `listen`: changing them takes a restart.
        let limits = reconix_agent::coordinator::Limits {
            handshake_timeout: enrollment.handshake_timeout.to_std(),
            max_pending_per_source: usize::try_from(enrollment.max_pending_per_source)
                .unwrap_or(usize::MAX),
            ..reconix_agent::coordinator::Limits::default()
        };
        let agents_listener =
            reconix_agent::coordinator::Listener::bind(enrollment.listen, &key, limits)
                .await
                .with_context(|| {
                    format!("binding the enrollment listener {}", enrollment.listen)
                })?;
        // Agents pin this fingerprint on first use (`reconix-agent --coordinator-key` pins it
        // up front).
        println!(
            "agents enroll at {} (coordinator key {})",
            agents_listener.local_addr(),
            key.fingerprint()
        );
        ctx.tasks.spawn(reconix_reconcilers::agents::run_enrollment(
            agents_listener,
            spec_rx.clone(),
            status.clone(),
            ctx.agents.clone(),
            ctx.wakers.clone(),
            shutdown.clone(),
        ));
    }

    let listener = reconix_web::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    // The e2e harness and `demo` wait for this exact line: it is the readiness signal.
    println!("listening on http://{addr}");
    info!(%addr, state_dir = %spec.state_dir.display(), "serving");
    if let Some(on_ready) = opts.on_ready {
        on_ready(addr, status.clone());
    }

    // Deliveries and API mutations wake the loops that act on them; the wakers only poke the
    // controllers' queues.
    let wakers = ctx.wakers.clone();
    let wake = Arc::new(move |w: reconix_web::Wake| match w {
        reconix_web::Wake::Head(repo) => {
            wakers.evaluations(repo.clone());
            wakers.statuses(repo);
        }
        reconix_web::Wake::PullRequest(repo) => wakers.heads(repo),
        reconix_web::Wake::SignatureFailure(repo) => wakers.webhooks(repo),
        reconix_web::Wake::Builds => wakers.builds(),
        reconix_web::Wake::Evaluations(repo) => wakers.evaluations(repo),
        reconix_web::Wake::Statuses(repo) => wakers.statuses(repo),
    });
    let mut app = reconix_web::AppState::new(status.clone())
        .with_tasks(ctx.tasks.tracker().clone())
        .with_intake(spec_rx.clone(), wake)
        .with_spec_errors(spec_errors)
        .with_metrics(metrics.clone());
    // Build products are read where the store's files are: below a chroot store's directory.
    if let Some(root) = opts.nix_store.as_deref().filter(|s| s.starts_with('/')) {
        app = app.with_store_root(root);
    }
    let config = reconix_web::ServerConfig { fd_limit };
    let http = reconix_web::serve_with(listener, app, config, {
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    });
    let running = ctx.running.clone();
    let mut runs = loops.start();
    let (http, (), ()) = tokio::join!(http, reloader.run(shutdown.clone()), async {
        while let Some(ended) = runs.join_next().await {
            // A controller catches its reconciles' panics; one of its own stops only its loop.
            if let Err(err) = ended {
                error!(error = %err, "a loop's controller panicked");
            }
        }
    });
    if !running.is_empty() {
        warn!(builds = running.len(), "stopping running builds");
        running.cancel_all();
    }
    // The builds just cancelled record how they ended; loop-health writes, the checkpointer
    // and the webhook recorder finish their work.
    let left = ctx.tasks.shutdown(TASKS_GRACE).await;
    if left > 0 {
        warn!(
            tasks = left,
            grace = ?TASKS_GRACE,
            "background tasks still running after the grace period: stopping them"
        );
    }
    if let Err(err) = http {
        error!(error = %err, "http server failed");
        return Ok(ExitCode::FAILURE);
    }
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Raises the soft open-file limit to the hard one (the HTTP port and the builds need many
/// descriptors; distributions often start services at 1,024) and returns the soft limit now in
/// force, which caps the HTTP connections. `None` when it cannot be read.
fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            info!(soft, "open-file limit");
            Some(soft)
        }
        Err(err) => {
            warn!(error = %err, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// Builds a controller for every loop it visits ([`Loops::controller`]) and keeps its handle.
struct Loops<'a> {
    ctx: &'a Arc<Ctx<LivePorts<NixCli>>>,
    spec: &'a watch::Receiver<Arc<Spec>>,
    status: &'a Status,
    metrics: &'a Metrics,
    shutdown: &'a CancellationToken,
    handles: Handles,
    /// The controllers' runs, not started yet: a loop may wake another as soon as it runs, so
    /// they start once the wakers are set.
    runs: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl LoopVisitor<LivePorts<NixCli>> for Loops<'_> {
    fn visit<R: Loop<LivePorts<NixCli>>>(&mut self, reconciler: R) {
        let controller = self.controller(reconciler);
        self.handles.insert::<R>(controller.handle());
        self.runs
            .push(Box::pin(controller.run(self.shutdown.clone())));
    }
}

/// Returns the wakers' handles: which loops other loops and the webhook intake wake.
fn waker_set(handles: &Handles) -> Result<WakerSet> {
    type P = LivePorts<NixCli>;
    let missing = |name: &str| anyhow::anyhow!("the {name} loop is not registered");
    Ok(WakerSet {
        builds: handles
            .get::<Builds<P>>()
            .ok_or_else(|| missing(Builds::<P>::NAME))?,
        gcroots: handles
            .get::<GcRoots<P>>()
            .ok_or_else(|| missing(GcRoots::<P>::NAME))?,
        evaluations: handles
            .get::<Evaluations<P>>()
            .ok_or_else(|| missing(Evaluations::<P>::NAME))?,
        heads: handles.get::<Heads<P>>(),
        statuses: handles.get::<Statuses<P>>(),
        webhooks: handles.get::<Webhooks<P>>(),
        builders: handles.get::<BuildersLoop<P>>(),
        caches: handles.get::<Caches<P>>(),
    })
}

impl Loops<'_> {
    /// Starts every controller as a task; returns them to be awaited.
    fn start(self) -> JoinSet<()> {
        let mut runs = JoinSet::new();
        for run in self.runs {
            runs.spawn(run);
        }
        runs
    }

    /// Builds a controller whose every run is recorded as loop health in the status database
    /// (which `/loops` shows) and counted in the metrics, which also learn what each listing
    /// found (for `/readyz`).
    fn controller<R: Loop<LivePorts<NixCli>>>(&self, reconciler: R) -> Controller<R> {
        let status = self.status.clone();
        let tasks = self.ctx.tasks.clone();
        self.metrics.register_loop(R::NAME);
        let listed = self.metrics.clone();
        let reported = self.metrics.clone();
        Controller::new(
            Arc::new(reconciler),
            Arc::clone(self.ctx),
            self.spec.clone(),
        )
        .on_listed(move |keys| listed.record_listing(R::NAME, keys))
        .on_report(move |report: &RunReport| {
            reported.record_reconcile(
                report.loop_name,
                report.duration,
                report.outcome.as_ref().map(|_| ()).map_err(String::as_str),
            );
            if report.storage_trouble {
                reported.record_storage_full(Timestamp::now());
            }
            let status = status.clone();
            let name = report.loop_name;
            let outcome = report.outcome.clone();
            let next = report.next_run.map(|d| Timestamp::now().plus(d));
            tasks.spawn(async move {
                let recorded = status
                    .call(move |db| {
                        db.record_loop_run(
                            name,
                            outcome.as_ref().map(|_| ()).map_err(String::as_str),
                            next,
                            Timestamp::now(),
                        )
                    })
                    .await;
                if let Err(err) = recorded {
                    warn!(loop = name, error = %err, "could not record loop health");
                }
            });
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_should_refuse_to_move_the_state_dir_or_the_socket() {
        let spec = Spec::default();
        let (dir, listen) = (spec.state_dir.clone(), spec.listen);
        assert_eq!(check_pinned(&dir, listen, &spec), Ok(()));
        let err = check_pinned(Path::new("/elsewhere"), listen, &spec).unwrap_err();
        assert!(
            err.contains("state-dir changed") && err.contains("restart"),
            "{err}"
        );
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let err = check_pinned(&dir, other, &spec).unwrap_err();
        assert!(err.starts_with("listen changed"), "{err}");
    }
}
