# What daemon/tests/nixos.rs checks, evaluated with plain Nix and the stub lib:
# - `options`: the generated options as a tree of names (leaves: type names);
# - `rendered`: the example settings in `settingsFile` (JSON) rendered to a spec;
# - `module`: what `services.reconix` sets for them.
{ settingsFile }:
let
  lib = import ./stub-lib.nix;
  generated = import ../options.nix { inherit lib; };
  describeType =
    t:
    if t.name == "submodule" then
      describe t.options
    else if t ? elem then
      describeType t.elem
    else
      t.name;
  describe = builtins.mapAttrs (_: opt: describeType opt.type);
  settings = builtins.fromJSON (builtins.readFile settingsFile);
  pkgs = {
    writeText = name: text: builtins.toFile name text;
    reconix = {
      outPath = "/nix/store/00000000000000000000000000000000-reconix";
    };
    git = "/nix/store/00000000000000000000000000000000-git";
    coreutils = "/nix/store/00000000000000000000000000000000-coreutils";
  };
  module = import ../module.nix {
    inherit lib pkgs;
    config = {
      services.reconix = {
        enable = true;
        inherit settings;
        openEnrollmentPort = true;
        user = "reconix";
        package = pkgs.reconix;
      };
      nix.package = "/nix/store/00000000000000000000000000000000-nix";
    };
  };
  content = module.config.content;
  service = content.systemd.services.reconix;
in
{
  options = describe generated.options;
  inherit (generated) secretKeys;
  rendered = import ../render.nix {
    inherit settings;
    inherit (generated) secretKeys;
    credentialsDir = "/run/credentials/reconix.service";
  };
  module = {
    enableOption = module.options.services.reconix.enable.type.name;
    execStart = service.serviceConfig.ExecStart;
    specText = builtins.readFile (builtins.head (builtins.match ".* --spec ([^ ]+)" service.serviceConfig.ExecStart));
    inherit (service.serviceConfig) LoadCredential User ProtectSystem NoNewPrivileges CapabilityBoundingSet LimitNOFILE MemoryMax;
    inherit (service) environment;
    trustedUsers = content.nix.settings.trusted-users;
    firewall = content.networking.firewall.allowedTCPPorts;
  };
}
