# `services.reconix-agent`: a remote builder that dials a reconix coordinator and builds for it.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.reconix-agent;
  credentialsDir = "/run/credentials/reconix-agent.service";
  args = lib.concatStringsSep " " (
    [
      "--coordinator ${lib.escapeShellArg cfg.coordinator}"
      "--state-dir /var/lib/reconix-agent"
      "--name ${lib.escapeShellArg cfg.name}"
      "--systems ${lib.escapeShellArg (lib.concatStringsSep "," cfg.systems)}"
      "--max-jobs ${toString cfg.maxJobs}"
    ]
    ++ lib.optional (cfg.features != [ ]) "--features ${lib.escapeShellArg (lib.concatStringsSep "," cfg.features)}"
    ++ lib.optional (cfg.tokenFile != null) "--token-file ${credentialsDir}/token"
    ++ lib.optional (cfg.coordinatorKey != null) "--coordinator-key ${lib.escapeShellArg cfg.coordinatorKey}"
  );
in
{
  options.services.reconix-agent = {
    enable = lib.mkEnableOption "the reconix remote-builder agent";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.reconix;
      defaultText = lib.literalExpression "pkgs.reconix";
      description = "The package providing `reconix-agent`.";
    };

    coordinator = lib.mkOption {
      type = lib.types.str;
      example = "ci.example.org:7070";
      description = "The coordinator's enrollment address (its `builders.enrollment.listen`), HOST:PORT.";
    };

    name = lib.mkOption {
      type = lib.types.str;
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      description = "The builder's name; the coordinator's `builders.remote.<name>` caps it.";
    };

    tokenFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "File holding the enrollment token (the coordinator's `builders.enrollment.token-file`); needed on first contact only. Passed as a systemd credential.";
    };

    coordinatorKey = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "SHA256:…";
      description = "The coordinator key's fingerprint (`reconix serve` prints it); without it the first key seen is pinned.";
    };

    systems = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ pkgs.stdenv.hostPlatform.system ];
      defaultText = lib.literalExpression "[ pkgs.stdenv.hostPlatform.system ]";
      description = "The systems this machine builds for.";
    };

    features = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "kvm" "big-parallel" ];
      description = "The Nix system features it offers.";
    };

    maxJobs = lib.mkOption {
      type = lib.types.ints.positive;
      default = 1;
      description = "How many builds run at once.";
    };
  };

  config = lib.mkIf cfg.enable {
    users.users.reconix-agent = {
      isSystemUser = true;
      group = "reconix-agent";
    };
    users.groups.reconix-agent = { };
    # The agent runs `nix-store --serve --write`: it must be trusted by the Nix daemon.
    nix.settings.trusted-users = [ "reconix-agent" ];

    systemd.services.reconix-agent = {
      description = "reconix remote-builder agent";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [
        "network-online.target"
        "nix-daemon.socket"
      ];
      path = [ config.nix.package ];
      environment.NIX_REMOTE = "daemon";
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/reconix-agent ${args}";
        Restart = "always";
        RestartSec = 5;
        User = "reconix-agent";
        Group = "reconix-agent";
        StateDirectory = "reconix-agent";
        LoadCredential = lib.optional (cfg.tokenFile != null) "token:${cfg.tokenFile}";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        CapabilityBoundingSet = "";
        # Every serve channel holds pipes and store files: room for many builds at once.
        LimitNOFILE = 65536;
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        SystemCallArchitectures = "native";
        UMask = "0077";
      };
    };
  };
}
