# The reconix package: the daemon and CLI (`reconix`) and the remote-builder agent
# (`reconix-agent`), built from the workspace's Cargo.lock.
{
  lib,
  rustPlatform,
  pkg-config,
  sqlite,
  git,
  nix,
}:
rustPlatform.buildRustPackage {
  pname = "reconix";
  version = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).workspace.package.version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../agent
      ../daemon
      ../e2e
      ../fakeforge
      ../forge
      ../nixcli
      ../reconcilers
      ../spec
      ../status
      ../web
      ../docs/spec.schema.json
      ../nix/options.nix
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ pkg-config ];
  buildInputs = [ sqlite ];

  cargoBuildFlags = [
    "--package"
    "reconix"
    "--package"
    "reconix-agent"
  ];

  # The test suite needs a Nix store, git repositories and loopback servers: `make test` runs it.
  doCheck = false;

  nativeCheckInputs = [
    git
    nix
  ];

  meta = {
    description = "Declarative, webhook-driven Nix CI for GitHub, GitLab and Forgejo/Gitea";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "reconix";
    platforms = lib.platforms.linux;
  };
}
