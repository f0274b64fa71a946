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
  # A byte size as the spec reads it (`2 GiB`, `512MiB`, `1.5 GB`; units in any case, the
  # trailing `B` optional), in bytes.
  bytes =
    text:
    let
      m = builtins.match " *([0-9]+)(\\.([0-9]+))? *([A-Za-z]*) *" text;
      lower = builtins.replaceStrings [ "B" "K" "M" "G" "T" "P" "I" ] [ "b" "k" "m" "g" "t" "p" "i" ];
      unit = lower (builtins.elemAt m 3);
      bare = if unit != "b" && builtins.match ".+b" unit != null then builtins.substring 0 (builtins.stringLength unit - 1) unit else unit;
      factors = {
        "" = 1;
        b = 1;
        k = 1000;
        m = 1000000;
        g = 1000000000;
        t = 1000000000000;
        ki = 1024;
        mi = 1048576;
        gi = 1073741824;
        ti = 1099511627776;
      };
      factor = factors.${bare} or (throw "services.reconix: cannot read the byte size `${text}`");
      frac = builtins.elemAt m 2;
      pow10 = n: if n == 0 then 1 else 10 * pow10 (n - 1);
      fracBytes = if frac == null then 0 else lib.toInt frac * factor / pow10 (builtins.stringLength frac);
    in
    if m == null then throw "services.reconix: cannot read the byte size `${text}`" else lib.toInt (builtins.elemAt m 0) * factor + fracBytes;
  evaluation = if cfg.settings.evaluation or null != null then cfg.settings.evaluation else { };
  evalWorkers = evaluation.workers or null;
  evalMaxMemory = if evaluation.max-memory or null != null then bytes evaluation.max-memory else bytes "2 GiB";
  # The evaluators' budget (workers × max-memory) plus the daemon's own need (itself, git,
  # build channels): 1 GiB. Unknown while `workers` follows the number of cores.
  memoryMax = if evalWorkers == null then null else evalWorkers * evalMaxMemory + bytes "1 GiB";
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
      environment = {
        NIX_REMOTE = "daemon";
        # glibc gives each thread that allocates under contention an arena of its own (up to
        # 8 per core), and each keeps what it freed: two arenas hold the daemon's peak while
        # it records a 50,000-job evaluation at 132 MiB instead of 157 (docs/benchmarks.md).
        MALLOC_ARENA_MAX = "2";
      };
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
        # Evaluator processes are the daemon's children: the whole service stays within their
        # budget plus the daemon's own need (set only when `settings.evaluation.workers` is).
        MemoryMax = lib.mkIf (memoryMax != null) (toString memoryMax);
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
