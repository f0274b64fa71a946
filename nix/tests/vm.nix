# NixOS VM test: a coordinator and one agent; the agent builds a tiny flake's package.
# Runs with `nix flake check` on a machine with KVM and nixpkgs (not on the CI machines of this
# repository, which have neither).
{ pkgs, self }:
pkgs.testers.runNixOSTest {
  name = "reconix-coordinator-and-agent";

  nodes = {
    coordinator =
      { ... }:
      {
        imports = [ self.nixosModules.default ];
        environment.etc."reconix/enroll-token".text = "test-enrollment-token";
        services.reconix = {
          enable = true;
          openEnrollmentPort = true;
          settings = {
            listen = "0.0.0.0:8080";
            forges.here = {
              kind = "local";
              repos.demo.path = "/srv/demo";
            };
            builders = {
              local.max-jobs = 0;
              enrollment = {
                listen = "0.0.0.0:7070";
                token-file = "/etc/reconix/enroll-token";
              };
            };
          };
        };
        networking.firewall.allowedTCPPorts = [ 8080 ];
      };
    builder =
      { ... }:
      {
        imports = [ self.nixosModules.agent ];
        environment.etc."reconix-agent/token".text = "test-enrollment-token";
        services.reconix-agent = {
          enable = true;
          coordinator = "coordinator:7070";
          name = "builder";
          tokenFile = "/etc/reconix-agent/token";
        };
      };
  };

  testScript = ''
    start_all()
    coordinator.wait_for_unit("reconix.service")
    coordinator.succeed("mkdir -p /srv/demo && cd /srv/demo && git init -q -b main")
    coordinator.succeed("cp ${../../daemon/src/cli/demo-flake.nix} /srv/demo/flake.nix")
    coordinator.succeed("cd /srv/demo && git add flake.nix && git -c user.name=t -c user.email=t@t commit -qm demo")
    builder.wait_for_unit("reconix-agent.service")
    coordinator.wait_until_succeeds("reconix builders list --server http://127.0.0.1:8080 | grep -q 'builder.*ready'")
    coordinator.wait_until_succeeds(
      "curl -sf http://127.0.0.1:8080/api/v1/evaluations | grep -q finished", timeout=600
    )
    coordinator.succeed("curl -sf http://127.0.0.1:8080/api/v1/jobs | grep -q '\"builder\":\"builder\"'")
  '';
}
