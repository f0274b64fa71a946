{
  description = "reconix: a declarative, webhook-driven Nix CI for GitHub, GitLab and Forgejo/Gitea";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = final: _prev: { reconix = final.callPackage ./nix/package.nix { }; };

      packages = forAllSystems (pkgs: rec {
        reconix = pkgs.callPackage ./nix/package.nix { };
        default = reconix;
      });

      nixosModules = {
        default = {
          imports = [ ./nix/module.nix ];
          nixpkgs.overlays = [ self.overlays.default ];
        };
        agent = {
          imports = [ ./nix/agent-module.nix ];
          nixpkgs.overlays = [ self.overlays.default ];
        };
      };

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.reconix ];
          packages = with pkgs; [
            cargo-nextest
            cargo-deny
            clippy
            rustfmt
            rust-analyzer
            nix
            git
            chromium
            python3
          ];
        };
      });

      checks = forAllSystems (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
          reconix = self.packages.${system}.reconix;
        in
        {
          package = reconix;
          clippy = reconix.overrideAttrs (old: {
            pname = "reconix-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = "cargo clippy --workspace --all-targets --offline -- -D warnings";
            installPhase = "touch $out";
            doCheck = false;
          });
          # The unit tests that need neither Nix nor a network (the e2e suite runs in `make test`).
          tests = reconix.overrideAttrs (old: {
            pname = "reconix-tests";
            doCheck = true;
            checkPhase = "cargo test --offline --workspace --lib";
            installPhase = "touch $out";
          });
          # The module's spec rendering: every example renders to a spec `reconix check` accepts.
          module-rendering = pkgs.runCommand "reconix-module-rendering" { nativeBuildInputs = [ reconix ]; } ''
            ${nixpkgs.lib.concatMapStrings (
              name:
              let
                example = builtins.fromJSON (builtins.readFile ./nix/tests/examples/${name});
                rendered = import ./nix/render.nix {
                  settings = example;
                  inherit ((import ./nix/options.nix { inherit (nixpkgs) lib; })) secretKeys;
                  credentialsDir = "/run/credentials/reconix.service";
                };
              in
              ''
                cat > spec.yaml <<'SPEC'
                ${rendered.text}
                SPEC
                reconix check spec.yaml
              ''
            ) (builtins.attrNames (builtins.readDir ./nix/tests/examples))}
            touch $out
          '';
          vm = import ./nix/tests/vm.nix { inherit pkgs self; };
        }
      );
    };
}
