# `services.reconix`: the reconix daemon on NixOS.
#
# `settings` is the spec (see docs/configuration.md), typed by options generated from its JSON
# Schema (./options.nix). Secret files named in it are handed to the service with systemd's
# `LoadCredential`, so they can stay readable by root only.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.reconix;
  generated = import ./options.nix { inherit lib; };
  credentialsDir = "/run/credentials/reconix.service";
  rendered = import ./render.nix {
    inherit (cfg) settings;
    inherit (generated) secretKeys;
    inherit credentialsDir;
  };
  specFile = pkgs.writeText "reconix-spec.yaml" rendered.text;
  stateDir = if cfg.settings.state-dir or null != null then cfg.settings.state-dir else "/var/lib/reconix";
  enrollment = if cfg.settings.builders or null != null then cfg.settings.builders.enrollment or null else null;
  enrollmentPort =
    if enrollment != null then lib.toInt (lib.last (lib.splitString ":" enrollment.listen)) else null;
in
{
  options.services.reconix = {
    enable = lib.mkEnableOption "reconix, a declarative, webhook-driven Nix CI";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.reconix;
      defaultText = lib.literalExpression "pkgs.reconix";
      description = "The reconix package (the `overlays.default` of reconix's flake provides it).";
    };

    settings = lib.mkOption {
      type = lib.types.submodule { inherit (generated) options; };
      default = { };
      description = ''
        The reconix spec (see reconix's docs/configuration.md). Unset options keep reconix's
        defaults. Secret files (`token-file`, `webhook-secret-file`, `signing-key-file`, …) are
        passed to the service as systemd credentials, so they may be readable by root only.
      '';
    };

    openEnrollmentPort = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the port of `settings.builders.enrollment.listen` in the firewall, for remote builders.";
    };

    user = lib.mkOption {
      type = lib.types.str;
      default = "reconix";
      description = "The user the daemon runs as; it is made a trusted Nix user.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = !cfg.openEnrollmentPort || enrollmentPort != null;
        message = "services.reconix.openEnrollmentPort needs settings.builders.enrollment.listen";
      }
    ];

    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.user;
      home = stateDir;
      description = "reconix CI daemon";
    };
    users.groups.${cfg.user} = { };

    # Builds, GC roots and signing need a trusted user of the Nix daemon.
    nix.settings.trusted-users = [ cfg.user ];

    networking.firewall.allowedTCPPorts = lib.mkIf (cfg.openEnrollmentPort && enrollmentPort != null) [
      enrollmentPort
    ];

    systemd.services.reconix = {
      description = "reconix CI daemon";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [
        "network-online.target"
        "nix-daemon.socket"
      ];
      path = [
        config.nix.package
        pkgs.git
      ];
      environment.NIX_REMOTE = "daemon";
      restartTriggers = [ specFile ];
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/reconix serve --spec ${specFile}";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "on-failure";
        User = cfg.user;
        Group = cfg.user;
        LoadCredential = rendered.credentials;
        StateDirectory = lib.mkIf (stateDir == "/var/lib/reconix") "reconix";
        ReadWritePaths = [ stateDir ];
        WorkingDirectory = stateDir;
        # Hardening: reconix needs the network, its state directory and the Nix daemon socket.
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        CapabilityBoundingSet = "";
        # Many open sockets and build pipes: the daemon raises its soft limit to this hard one
        # at start-up and keeps its HTTP connections well below it.
        LimitNOFILE = 65536;
        AmbientCapabilities = "";
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        UMask = "0077";
      };
    };
  };
}
