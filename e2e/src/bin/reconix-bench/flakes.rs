//! The generated benchmark flakes and the raw-Nix commands they are compared with.

use std::ffi::OsString;
use std::path::Path;

/// The system every generated package is built for.
pub(crate) const SYSTEM: &str = "x86_64-linux";

/// The ref every benchmark commit is on (the daemon watches `main`).
pub(crate) const GIT_REF: &str = "refs/heads/main";

/// A flake with no inputs and packages `p0 … p{n-1}`, where `p_i` depends on `p_(i/10)`
/// (`nix-lab.md` §3). `salt` is part of every derivation, so a new salt means new `.drv` files
/// (a cold evaluation) and new outputs (nothing already built).
///
/// Each builder reads one line of its dependency and writes one line: trivial builds, and
/// per-command redirections only (`exec > $out` would get the builder killed by Nix 2.8).
pub(crate) fn chain_flake(n: usize, salt: &str) -> String {
    Shape::Tree.flake(n, salt)
}

/// The shape of a build benchmark's flake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// [`chain_flake`]: `p_i` needs `p_(i/10)`, trivial builders (`build N`).
    Tree,
    /// Independent packages whose builders each spin about half a second of CPU in a shell
    /// loop (no `sleep`: the CPU is really used) (`build-busy N`).
    Busy,
    /// A line: `p_i` needs `p_(i-1)`, trivial builders, so each build waits for the one before
    /// and dispatch latency adds up (`build-line N`).
    Line,
}

/// Iterations of the busy builders' loop: about 0.45 s in busybox `sh` on the bench machine.
const BUSY_SPIN: usize = 300_000;

impl Shape {
    /// The benchmark's name in the report.
    pub(crate) const fn kind(self) -> &'static str {
        match self {
            Self::Tree => "build",
            Self::Busy => "build-busy",
            Self::Line => "build-line",
        }
    }

    /// The target ratio against raw `nix build` (issue 17).
    pub(crate) const fn target(self) -> f64 {
        match self {
            Self::Tree | Self::Line => 1.15,
            Self::Busy => 1.05,
        }
    }

    /// The flake of `n` packages `p0 … p{n-1}` with `salt`, built by this shape's builders.
    pub(crate) fn flake(self, n: usize, salt: &str) -> String {
        let (what, builder) = match self {
            Self::Tree => (
                "p_i depends on p_(i/10)",
                r#"[ "-c" (if i == 0 then "echo p0 > $out"
            else "read x < ${pkgs."p${toString (i / 10)}"}; echo \"${name} $x\" > $out") ]"#
                    .to_owned(),
            ),
            Self::Busy => (
                "each builder spins about half a second",
                format!(
                    r#"[ "-c" "i=0; while [ $i -lt {BUSY_SPIN} ]; do i=$((i+1)); done; echo ${{name}} $i > $out" ]"#
                ),
            ),
            Self::Line => (
                "p_i depends on p_(i-1)",
                r#"[ "-c" (if i == 0 then "echo p0 > $out"
            else "read x < ${pkgs."p${toString (i - 1)}"}; echo \"${name} $x\" > $out") ]"#
                    .to_owned(),
            ),
        };
        r#"{
  description = "reconix benchmark: @N@ packages, @WHAT@";
  outputs = { self }:
    let
      system = "x86_64-linux";
      mk = i:
        let name = "p${toString i}"; in
        derivation {
          inherit name system;
          salt = "@SALT@";
          builder = "/bin/sh";
          args = @ARGS@;
        };
      pkgs = builtins.listToAttrs (builtins.genList (i: { name = "p${toString i}"; value = mk i; }) @N@);
    in { packages.${system} = pkgs; };
}
"#
        .replace("@ARGS@", &builder)
        .replace("@WHAT@", what)
        .replace("@N@", &n.to_string())
        .replace("@SALT@", salt)
    }
}

/// The jobs expression of `nix-lab.md` appendix B: one pure bulk evaluation over packages,
/// checks, devShells and NixOS toplevels, each attribute under `tryEval` + `deepSeq`, printing
/// name, system, drvPath and every output path (and writing the `.drv` files).
pub(crate) const JOBS_EXPR: &str = r#"flake:
let
  sys = "x86_64-linux";
  job = v:
    let
      info = {
        drvPath = v.drvPath; name = v.name; system = v.system;
        outputs = builtins.listToAttrs (map (o: { name = o; value = v.${o}.outPath; }) (v.outputs or [ "out" ]));
      };
      r = builtins.tryEval (if (v.type or null) == "derivation" then builtins.deepSeq info info else { error = "not a derivation"; });
    in if r.success then r.value else { error = "evaluation failed (throw/assert)"; };
  perSystem = attr: builtins.mapAttrs (n: job) ((flake.${attr} or { }).${sys} or { });
in {
  packages = perSystem "packages"; checks = perSystem "checks"; devShells = perSystem "devShells";
  nixosConfigurations = builtins.mapAttrs (n: c: job c.config.system.build.toplevel) (flake.nixosConfigurations or { });
}"#;

/// The locked flake reference of `rev` in the checkout at `repo`, the form reconix evaluates.
pub(crate) fn flake_ref(repo: &Path, rev: &str) -> String {
    format!("git+file://{}?ref={GIT_REF}&rev={rev}", repo.display())
}

/// Arguments of `nix` for the raw bulk evaluation of `flake_ref` in the chroot store `store`.
pub(crate) fn raw_eval_args(store: &Path, flake_ref: &str) -> Vec<OsString> {
    let expr = format!("(({JOBS_EXPR}) (builtins.getFlake \"{flake_ref}\"))");
    vec![
        "--store".into(),
        store.into(),
        "eval".into(),
        "--json".into(),
        "--expr".into(),
        expr.into(),
    ]
}

/// How [`raw_eval_args`] is printed: the expression stands as `$JOBS` (appendix B).
pub(crate) fn raw_eval_display(store: &Path, flake_ref: &str) -> String {
    format!(
        "nix --store {} eval --json --expr \"((${{JOBS}}) (builtins.getFlake \\\"{flake_ref}\\\"))\"",
        store.display()
    )
}

/// Arguments of `nix` for the raw build of `p0 … p{n-1}` of `flake_ref`: one `nix build` with
/// every attribute as an installable.
pub(crate) fn raw_build_args(
    store: &Path,
    flake_ref: &str,
    n: usize,
    max_jobs: u32,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--store".into(),
        store.into(),
        "build".into(),
        "--no-link".into(),
        "--max-jobs".into(),
        max_jobs.to_string().into(),
    ];
    args.extend((0..n).map(|i| format!("{flake_ref}#packages.{SYSTEM}.p{i}").into()));
    args
}

/// How [`raw_build_args`] is printed (the installables abbreviated).
pub(crate) fn raw_build_display(store: &Path, flake_ref: &str, n: usize, max_jobs: u32) -> String {
    let last = n.saturating_sub(1);
    format!(
        "nix --store {} build --no-link --max-jobs {max_jobs} '{flake_ref}#packages.{SYSTEM}.p0' \
         '{flake_ref}#packages.{SYSTEM}.p1' … '{flake_ref}#packages.{SYSTEM}.p{last}' ({n} installables)",
        store.display()
    )
}

/// The daemon's spec: a local forge polling `repo` every `poll_interval`, `max_jobs` local
/// builds at once (0 turns building off).
pub(crate) fn daemon_spec(repo: &Path, poll_interval: &str, max_jobs: u32) -> String {
    format!(
        "state-dir: {{state_dir}}\n\
         forges:\n  here:\n    kind: local\n    poll-interval: {poll_interval}\n    repos:\n      bench:\n        path: {}\n        branches: [main]\n\
         builders:\n  local:\n    max-jobs: {max_jobs}\n",
        repo.display()
    )
}
