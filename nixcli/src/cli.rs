//! `NixCli`: the real [`Nix`], running the `nix` and `nix-store` programs.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reconix_spec::names::StorePath;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::build::BuildMode;
use crate::parse::stderr::{first_error_line, last_line};
use crate::pool::BuildPool;
use crate::port::{BuildOutcome, BuildRequest, EvalOutcome, EvalRequest, Nix, PathSize};
use crate::roots;
use crate::serve::{BuildSettings, RemoteBuildOutcome, ServeClient};
use crate::{Error, Result};

/// How many paths one `nix-store --check-validity` call gets (keeps argv small).
const VALIDITY_CHUNK: usize = 1000;

/// Runs the real Nix programs (written against Nix 2.8; see `nix-lab.md`).
///
/// Cheap to clone. Builds go through a pool of long-lived `nix-store --serve --write` channels
/// by default ([`BuildMode`]); clones share the pool, and the `with_*` builders start a new one.
/// Every other invocation is a process, logged at debug level with its duration.
#[derive(Debug, Clone)]
pub struct NixCli {
    pub(crate) config: Arc<Config>,
    pub(crate) pool: Arc<BuildPool>,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) nix: PathBuf,
    pub(crate) nix_store: PathBuf,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) eval_parallelism: usize,
    pub(crate) max_jobs: Option<u32>,
    pub(crate) kill_grace: Duration,
    pub(crate) store: Option<OsString>,
    pub(crate) build_mode: BuildMode,
}

impl Default for NixCli {
    fn default() -> Self {
        Self::new()
    }
}

impl NixCli {
    /// Creates a runner using `nix` and `nix-store` from `PATH`, evaluating at most 2 processes
    /// at a time and building on channels ([`BuildMode::Channel`]) with `max-jobs = 1`.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                nix: PathBuf::from("nix"),
                nix_store: PathBuf::from("nix-store"),
                env: Vec::new(),
                eval_parallelism: 2,
                max_jobs: Some(1),
                kill_grace: Duration::from_secs(5),
                store: None,
                build_mode: BuildMode::default(),
            }),
            pool: Arc::default(),
        }
    }

    fn with_config(self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = Arc::unwrap_or_clone(self.config);
        change(&mut config);
        // Channels started with the old settings (program, store, max-jobs…) must not serve
        // the new ones.
        Self {
            config: Arc::new(config),
            pool: Arc::default(),
        }
    }

    /// Returns a runner that starts `program` instead of `nix`.
    #[must_use]
    pub fn with_nix_program(self, program: impl Into<PathBuf>) -> Self {
        let program = program.into();
        self.with_config(|c| c.nix = program)
    }

    /// Returns a runner that starts `program` instead of `nix-store`.
    #[must_use]
    pub fn with_nix_store_program(self, program: impl Into<PathBuf>) -> Self {
        let program = program.into();
        self.with_config(|c| c.nix_store = program)
    }

    /// Returns a runner that sets the environment variable `key` to `value` for every Nix
    /// process (e.g. `NIX_REMOTE`, `NIX_CONFIG`); the rest of the environment is inherited.
    #[must_use]
    pub fn with_env(self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        let pair = (key.into(), value.into());
        self.with_config(|c| c.env.push(pair))
    }

    /// Returns a runner that runs at most `n` (at least 1) evaluation processes at a time
    /// while bisecting and collecting error messages.
    #[must_use]
    pub fn with_eval_parallelism(self, n: usize) -> Self {
        self.with_config(|c| c.eval_parallelism = n.max(1))
    }

    /// Returns a runner that passes `--option max-jobs N` to each build (`None`: use
    /// `nix.conf`). The default, 1, makes one reconix build slot one Nix build at a time.
    #[must_use]
    pub fn with_max_jobs(self, max_jobs: Option<u32>) -> Self {
        self.with_config(|c| c.max_jobs = max_jobs)
    }

    /// Returns a runner that, when a build is cancelled, waits this long after `SIGTERM`
    /// before sending `SIGKILL` to the build's process group.
    #[must_use]
    pub fn with_kill_grace(self, grace: Duration) -> Self {
        self.with_config(|c| c.kill_grace = grace)
    }

    /// Returns a runner that passes `--store STORE` to every Nix command: a chroot store
    /// directory (`/var/lib/ci-store`, whose paths are still `/nix/store/…` but live below it)
    /// or a store URL. Evaluation, builds, roots and GC then all happen in that store.
    #[must_use]
    pub fn with_store(self, store: impl Into<OsString>) -> Self {
        let store = store.into();
        self.with_config(|c| c.store = Some(store))
    }

    /// Returns a runner that builds in `mode`: on pooled `nix-store --serve` channels (the
    /// default) or with one `nix-store --realise` per build.
    #[must_use]
    pub fn with_build_mode(self, mode: BuildMode) -> Self {
        self.with_config(|c| c.build_mode = mode)
    }

    /// Returns the binary caches Nix substitutes from (`substituters` of `nix show-config`),
    /// as seen with this runner's store and environment.
    ///
    /// # Errors
    /// Returns an error when Nix cannot run or prints something that is not its config.
    pub async fn substituters(&self) -> Result<Vec<String>> {
        let args = os_args(["show-config", "--json"]);
        let stdout = self.run_ok(&self.config.nix, &args).await?;
        parse_substituters(&stdout).map_err(|reason| Error::Output {
            command: command_line(&self.config.nix, &args),
            reason,
        })
    }

    /// Returns the build mode that fits this Nix: [`BuildMode::Channel`] when no substituter
    /// is configured, [`BuildMode::Process`] otherwise, because serve-protocol channels never
    /// substitute and would build from source what a cache could supply.
    ///
    /// # Errors
    /// See [`substituters`](Self::substituters).
    pub async fn suitable_build_mode(&self) -> Result<BuildMode> {
        Ok(if self.substituters().await?.is_empty() {
            BuildMode::Channel
        } else {
            BuildMode::Process
        })
    }

    /// Returns the value of the environment variable `key` as Nix processes see it (set with
    /// [`with_env`](Self::with_env), else inherited), when not empty.
    pub(crate) fn env_var(&self, key: &str) -> Option<OsString> {
        self.config
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os(key))
            .filter(|v| !v.is_empty())
    }

    /// Returns the store Nix processes use: `--store`, else `NIX_REMOTE`, else `None` (Nix's
    /// default, `auto`).
    pub(crate) fn effective_store(&self) -> Option<OsString> {
        self.config
            .store
            .clone()
            .or_else(|| self.env_var("NIX_REMOTE"))
    }

    /// Returns where a store path's file really is: below the chroot store's root when
    /// [`with_store`](Self::with_store) named a directory, else the path itself.
    pub(crate) fn physical(&self, path: &StorePath) -> PathBuf {
        match &self.config.store {
            Some(store) if Path::new(store).is_absolute() => {
                Path::new(store).join(path.as_str().trim_start_matches('/'))
            }
            _ => PathBuf::from(path.as_str()),
        }
    }

    /// Returns true when [`physical`](Self::physical) is where store paths really are: the
    /// store is a directory given with [`with_store`](Self::with_store), or the default one
    /// (`auto`, `daemon`, `local`, or none named here or in `NIX_REMOTE`).
    pub(crate) fn physical_is_exact(&self) -> bool {
        let default = |s: &OsString| matches!(s.to_str(), Some("auto" | "daemon" | "local"));
        match &self.config.store {
            Some(store) => Path::new(store).is_absolute() || default(store),
            None => self.effective_store().is_none_or(|s| default(&s)),
        }
    }

    /// Builds a command for `program` with the configured environment and no stdin.
    pub(crate) fn command(&self, program: &Path, args: &[OsString]) -> Command {
        let mut cmd = Command::new(program);
        // `--store` is a global setting flag: it goes before the subcommand for `nix` and is
        // accepted in any position by `nix-store`.
        if let Some(store) = &self.config.store {
            cmd.arg("--store").arg(store);
        }
        cmd.args(args)
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            // Dropping the future (a cancelled evaluation) must not leave Nix running.
            .kill_on_drop(true);
        cmd
    }

    /// Runs a command to completion, capturing stdout and stderr.
    pub(crate) async fn run(&self, program: &Path, args: &[OsString]) -> Result<Finished> {
        let started = Instant::now();
        let output = self
            .command(program, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| spawn_error(program, source))?;
        let finished = Finished {
            command: command_line(program, args),
            code: output.status.code(),
            status: status_text(output.status),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        debug!(
            command = %finished.command,
            status = %finished.status,
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "ran nix"
        );
        Ok(finished)
    }

    /// Runs a command that must succeed and returns its stdout.
    pub(crate) async fn run_ok(&self, program: &Path, args: &[OsString]) -> Result<String> {
        let finished = self.run(program, args).await?;
        finished.into_success()
    }
}

/// A finished Nix process.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) command: String,
    pub(crate) code: Option<i32>,
    pub(crate) status: String,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Finished {
    pub(crate) fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Returns the message of the failure: the first `error:` line, else the last stderr line.
    pub(crate) fn message(&self) -> String {
        first_error_line(&self.stderr)
            .or_else(|| last_line(&self.stderr))
            .unwrap_or_else(|| format!("nix exited with {}", self.status))
    }

    /// Returns stdout when the process succeeded, else an [`Error::Command`].
    pub(crate) fn into_success(self) -> Result<String> {
        if self.success() {
            Ok(self.stdout)
        } else {
            Err(Error::Command {
                message: self.message(),
                command: self.command,
                status: self.status,
            })
        }
    }
}

pub(crate) fn spawn_error(program: &Path, source: std::io::Error) -> Error {
    if source.kind() == std::io::ErrorKind::NotFound {
        Error::NixNotFound {
            program: program.to_owned(),
            source,
        }
    } else {
        Error::Spawn {
            program: program.to_owned(),
            source,
        }
    }
}

/// Renders a command line for logs and errors (long arguments such as the evaluation
/// expressions are shortened).
pub(crate) fn command_line(program: &Path, args: &[OsString]) -> String {
    let mut line = program.display().to_string();
    for arg in args {
        let arg = arg.to_string_lossy();
        line.push(' ');
        if arg.len() > 80 {
            let cut = (0..=80)
                .rev()
                .find(|&i| arg.is_char_boundary(i))
                .unwrap_or(0);
            line.push_str(&arg[..cut]);
            line.push('…');
        } else {
            line.push_str(&arg);
        }
    }
    line
}

pub(crate) fn status_text(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "unknown status".to_owned(),
    }
}

pub(crate) fn os_args<I, S>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    args.into_iter().map(|a| a.as_ref().to_owned()).collect()
}

/// Creates the parent directory of `path`, if it has one.
pub(crate) async fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| Error::Io {
                path: parent.to_owned(),
                source,
            }),
        _ => Ok(()),
    }
}

impl Nix for NixCli {
    async fn evaluate(&self, req: EvalRequest) -> Result<EvalOutcome> {
        crate::eval::evaluate(self, req).await
    }

    async fn realise(&self, req: BuildRequest, cancel: CancellationToken) -> Result<BuildOutcome> {
        crate::build::realise(self, req, cancel).await
    }

    async fn add_root(&self, link: &Path, path: &StorePath) -> Result<()> {
        create_parent(link).await?;
        if roots::auto_dir(self).is_none() {
            return roots::add_root_with_nix_store(self, link, path).await;
        }
        // The path must be valid and stay so until the root exists: a channel's query with
        // `lock` gives it a temporary root (honoured by a collection already under way).
        let mut channel = self
            .pool
            .acquire(self)
            .await
            .map_err(crate::pool::OpenError::into_error)?;
        let valid = channel
            .query_valid(&[path.as_str()], true)
            .await
            .map_err(|source| Error::Serve {
                message: "cannot query path validity".to_owned(),
                source,
            })?;
        let result = if valid.iter().any(|v| v == path.as_str()) {
            roots::register(self, vec![(link.to_owned(), path.clone())]).await
        } else {
            Err(Error::InvalidPath {
                path: path.to_string(),
            })
        };
        self.pool.release(channel);
        result
    }

    async fn is_valid(&self, paths: &[StorePath]) -> Result<Vec<bool>> {
        let mut invalid = std::collections::HashSet::new();
        for chunk in paths.chunks(VALIDITY_CHUNK) {
            let mut args = os_args(["--check-validity", "--print-invalid"]);
            args.extend(chunk.iter().map(|p| OsString::from(p.as_str())));
            let stdout = self.run_ok(&self.config.nix_store, &args).await?;
            invalid.extend(stdout.lines().map(str::to_owned));
        }
        Ok(paths
            .iter()
            .map(|p| !invalid.contains(p.as_str()))
            .collect())
    }

    async fn build_remote<R, W>(
        &self,
        client: &mut ServeClient<R, W>,
        drv_path: &StorePath,
        settings: &BuildSettings,
    ) -> Result<RemoteBuildOutcome>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        crate::serve::build_remote(client, self, drv_path, settings).await
    }

    async fn closure(&self, paths: &[StorePath]) -> Result<BTreeMap<StorePath, PathSize>> {
        crate::paths::closure(self, paths).await
    }

    async fn copy_to(&self, to: &str, paths: &[StorePath], closure: bool) -> Result<()> {
        crate::paths::copy_to(self, to, paths, closure).await
    }

    async fn collect_garbage(&self) -> Result<()> {
        // Idle channels hold temporary roots on everything they built: close them first.
        self.pool.close_idle().await;
        self.run_ok(&self.config.nix_store, &os_args(["--gc"]))
            .await
            .map(drop)
    }

    async fn version(&self) -> Result<String> {
        let args = os_args(["--version"]);
        let stdout = self.run_ok(&self.config.nix, &args).await?;
        // `nix (Nix) 2.8.0`
        stdout
            .split_whitespace()
            .last()
            .map(str::to_owned)
            .ok_or_else(|| Error::Output {
                command: command_line(&self.config.nix, &args),
                reason: "empty version".to_owned(),
            })
    }
}

/// Reads `substituters` out of `nix show-config --json`.
fn parse_substituters(json: &str) -> std::result::Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let value = v
        .get("substituters")
        .and_then(|s| s.get("value"))
        .ok_or("no `substituters` setting")?;
    let list = value.as_array().ok_or("`substituters` is not a list")?;
    list.iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| "a substituter is not a string".to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substituters_should_be_read_from_show_config() {
        let json = r#"{"substituters":{"aliases":["binary-caches"],"defaultValue":["https://cache.nixos.org/"],"value":["https://cache.nixos.org/","file:///c"]},"cores":{"value":0}}"#;
        assert_eq!(
            parse_substituters(json).unwrap(),
            ["https://cache.nixos.org/", "file:///c"]
        );
        assert_eq!(
            parse_substituters(r#"{"substituters":{"value":[]}}"#).unwrap(),
            Vec::<String>::new()
        );
        assert!(parse_substituters(r#"{"cores":{"value":0}}"#).is_err());
        assert!(parse_substituters("error: nope").is_err());
    }

    #[test]
    fn command_line_should_shorten_long_arguments_on_a_char_boundary() {
        let long = format!("{}é{}", "x".repeat(79), "y".repeat(50));
        let line = command_line(Path::new("nix"), &os_args(["eval", long.as_str()]));
        assert_eq!(line, format!("nix eval {}…", "x".repeat(79)));
    }

    #[test]
    fn builders_should_replace_only_the_setting_they_name() {
        let cli = NixCli::new()
            .with_nix_program("/opt/nix")
            .with_env("NIX_REMOTE", "daemon")
            .with_eval_parallelism(0)
            .with_max_jobs(None);
        assert_eq!(cli.config.nix, Path::new("/opt/nix"));
        assert_eq!(cli.config.nix_store, Path::new("nix-store"));
        assert_eq!(cli.config.eval_parallelism, 1);
        assert_eq!(cli.config.max_jobs, None);
        assert_eq!(cli.config.env.len(), 1);
    }

    #[tokio::test]
    async fn version_should_say_how_to_install_nix_when_it_is_missing() {
        let cli = NixCli::new().with_nix_program("/nonexistent/nix");
        let err = cli.version().await.unwrap_err();
        assert!(matches!(err, Error::NixNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("scripts/install-nix.sh"), "{err}");
    }

    #[tokio::test]
    async fn is_valid_should_not_run_nix_for_an_empty_list() {
        let cli = NixCli::new().with_nix_store_program("/nonexistent/nix-store");
        assert_eq!(cli.is_valid(&[]).await.unwrap(), Vec::<bool>::new());
    }
}
