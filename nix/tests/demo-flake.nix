# A sample flake written by `reconix demo`. It has no inputs, so it evaluates and builds offline
# with nothing but Nix itself: every derivation uses the sandbox's /bin/sh.
{
  description = "reconix demo flake";

  outputs = { self }:
    let
      system = "x86_64-linux";
      # `mk` makes a derivation from a shell script. Scripts redirect per command: a builder that
      # does `exec > $out` and then starts a subprocess is killed by Nix 2.8.
      mk = name: script: derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" script ];
      };

      hello = mk "hello-1.0" ''
        echo "building hello"; sleep 1
        mkdir -p $out/bin
        { echo '#!/bin/sh'; echo 'echo "Hello from reconix!"'; } > $out/bin/hello
        chmod +x $out/bin/hello
      '';

      # Depends on hello: reconix builds it only after hello succeeded.
      greeting = mk "greeting-1.0" ''
        echo "building greeting on top of ${hello}"; sleep 1
        mkdir -p $out/share
        $hello/bin/hello > $out/share/greeting.txt 2>&1 || echo "Hello from reconix!" > $out/share/greeting.txt
        ln -s ${hello} $out/hello
      '';

      docs = mk "docs-1.0" ''
        echo "writing docs"; sleep 2
        mkdir -p $out
        echo "reconix demo documentation" > $out/index.txt
      '';
    in
    {
      packages.${system} = {
        inherit hello greeting docs;
        default = greeting;
      };

      checks.${system} = {
        hello-runs = mk "check-hello-runs" ''
          test -x ${hello}/bin/hello && echo ok > $out
        '';
        greeting-text = mk "check-greeting-text" ''
          read line < ${greeting}/share/greeting.txt
          echo "greeting says: $line"
          echo ok > $out
        '';
        # Fails on purpose, so the status page shows what a failure and its log look like.
        lint = mk "check-lint" ''
          echo "lint: checking style..."
          echo "lint: src/main.c:3: line too long (120 > 100)" >&2
          exit 1
        '';
      };

      devShells.${system}.default = mk "demo-shell" ''
        echo "a dev shell would be built here" > $out
      '';

      # Not a real NixOS system (that needs nixpkgs): a toplevel-shaped derivation, so the demo shows
      # how reconix builds nixosConfigurations.<name>.config.system.build.toplevel.
      nixosConfigurations.demo = {
        config.system.build.toplevel = mk "nixos-system-demo" ''
          mkdir -p $out
          echo ${greeting} > $out/greeting-path
        '';
      };
    };
}
