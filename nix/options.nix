# Generated from docs/spec.schema.json by `reconix schema --nixos-options`; do not edit.
# `make test` fails when it is stale (spec/tests/schema.rs); RECONIX_BLESS=1 rewrites it.
{ lib }:
let
  inherit (lib) mkOption types;
  Builders = types.submodule {
    options = {
      enrollment = mkOption {
        type = types.nullOr (Enrollment);
        default = null;
        description = "Where remote builders connect to enrol; without it, no remote builder can join.";
      };
      heartbeat-timeout = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "A connected agent that sends no heartbeat for this long is considered dead: it is\ndisconnected and its running builds are requeued on other builders.\n\nreconix's default: `\"30s\"`.";
      };
      local = mkOption {
        type = types.nullOr (LocalBuilder);
        default = null;
        description = "Builds on the daemon's own machine.\n\nreconix's default: `{\"features\":[],\"max-jobs\":2,\"systems\":[\"x86_64-linux\"]}`.";
      };
      remote = mkOption {
        type = types.nullOr (types.attrsOf (RemoteBuilder));
        default = null;
        description = "Remote builders by name (the name `local` is reserved). Each one enrols itself through\n`enrollment`.\n\nreconix's default: `{}`.";
      };
      transient-retries = mkOption {
        type = types.nullOr (types.ints.unsigned);
        default = null;
        description = "How many more times a build is tried, on another builder when there is one, after a\ntransient failure (connection lost, builder gone, disk full). A build that fails by\nitself is never retried.\n\nreconix's default: `2`.";
      };
    };
  };
  Cache = types.submodule {
    options = {
      public-key = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "The cache's public key, `name:base64`, as `nix key convert-secret-to-public` prints it.\nRequired.";
      };
      public-url = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "The URL clients substitute from, when it differs from push-url.";
      };
      push-url = mkOption {
        type = types.str;
        description = "Where outputs are uploaded: `file:///srv/cache`, `https://…` (HTTP PUT) or\n`s3://bucket?region=…` (uploaded and signed by reconix itself).";
      };
      repos = mkOption {
        type = types.nullOr (types.listOf (types.str));
        default = null;
        description = "Only these repos (`<forge>/<repo>`) push here; omitted means every repo.";
      };
      s3-credentials-file = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "For `s3://` caches only: a file with the bucket's credentials as `KEY=value` lines,\n`AWS_ACCESS_KEY_ID=…` and `AWS_SECRET_ACCESS_KEY=…` (a systemd `EnvironmentFile`).";
      };
      signing-key-file = mkOption {
        type = types.str;
        description = "File holding the secret signing key (`nix key generate-secret`).";
      };
    };
  };
  Enrollment = types.submodule {
    options = {
      handshake-timeout = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "How long a connection has, from the TCP accept, to finish the SSH handshake and send\nits hello. Slower peers are dropped.\n\nreconix's default: `\"5s\"`.";
      };
      listen = mkOption {
        type = types.str;
        description = "Address to listen on for enrolling builders.";
      };
      max-pending-per-source = mkOption {
        type = types.nullOr (types.ints.unsigned);
        default = null;
        description = "How many connections from one source (an IPv4 address, an IPv6 /64) may be unfinished\nat once. A new connection beyond it replaces the oldest one that has sent nothing (else\nthe oldest one) of that source.\n\nreconix's default: `16`.";
      };
      token-file = mkOption {
        type = types.str;
        description = "File holding the token a builder must present to enrol. It is read again for every\nagent that needs it, so writing a new token rotates it without a restart (agents\nalready enrolled authenticate with their key and are unaffected).";
      };
    };
  };
  Evaluation = types.submodule {
    options = {
      allow-import-from-derivation = mkOption {
        type = types.nullOr (types.bool);
        default = null;
        description = "Whether evaluation may build derivations to import their outputs (import from\nderivation). When false, an attribute that needs it is an eval-failed job with Nix's\nmessage.\n\nreconix's default: `false`.";
      };
      max-memory = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "Memory one evaluator process may use: a worker that passes it between two attributes\nis restarted, and `workers × max-memory` is the budget for all evaluator processes\ntogether. When the budget is exceeded anyway the largest worker is stopped and its\nattributes are evaluated again; an attribute that does not fit even alone is an\neval-failed job.\n\nreconix's default: `\"2 GiB\"`.";
      };
      timeout = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "An evaluation still running after this ends `failed`, keeping the jobs it had found.\nA repository may override it (`eval-timeout`).\n\nreconix's default: `\"1h\"`.";
      };
      workers = mkOption {
        type = types.nullOr (types.ints.unsigned);
        default = null;
        description = "Evaluator processes at once, across all evaluations (they share them fairly). Default:\nthe number of cores.";
      };
    };
  };
  Forge = types.submodule {
    options = {
      api-url = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "Base URL of the REST API. Defaults to `https://api.github.com` for github and\n`https://gitlab.com/api/v4` for gitlab; required for gitea (e.g.\n`https://codeberg.org/api/v1`); not allowed for local.";
      };
      kind = mkOption {
        type = types.enum [ "github" "gitlab" "gitea" "local" ];
        description = "Which forge software this is.";
      };
      poll-interval = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "How often branch heads are polled: the only trigger for local forges, a safety net for\nmissed webhooks otherwise.\n\nreconix's default: `\"30s\"`.";
      };
      repos = mkOption {
        type = types.nullOr (types.attrsOf (Repo));
        default = null;
        description = "The repositories to build, by name: `owner/name` (GitLab: `group/…/name`) on hosted\nforges, any name for local ones.\n\nreconix's default: `{}`.";
      };
      token-file = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "File holding the API token. Required for every kind except local.";
      };
      web-url = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "Base URL of the web interface, used for links. Defaults to `https://github.com`,\n`https://gitlab.com`, or for gitea the api-url without `/api/v1`.";
      };
      webhook-secret-file = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "File holding the secret that signs this forge's webhooks. Required for every kind except\nlocal.";
      };
    };
  };
  Http = types.submodule {
    options = {
      body-timeout = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "A request body must arrive completely within this time after its head, or the\nconnection is closed (forges wait about 10 s for an answer to a delivery anyway).\n\nreconix's default: `\"10s\"`.";
      };
      header-timeout = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "A new connection must send a complete request head within this time, or it is closed.\n\nreconix's default: `\"5s\"`.";
      };
      idle-timeout = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "A kept-alive connection with no request in flight is closed after this time.\n\nreconix's default: `\"30s\"`.";
      };
      max-connections = mkOption {
        type = types.nullOr (types.ints.unsigned);
        default = null;
        description = "At most this many connections are open at once; the daemon lowers it to stay well below\nits open-file limit. When it is reached, a new connection takes the slot of the one that\nhas waited longest without a request in flight (then of the slowest request body), so\nidle or slow clients never lock out `/healthz`, the API or a forge's delivery.\n\nreconix's default: `1024`.";
      };
    };
  };
  LocalBuilder = types.submodule {
    options = {
      features = mkOption {
        type = types.nullOr (types.listOf (types.str));
        default = null;
        description = "Nix system features it offers (`kvm`, `big-parallel`, …).\n\nreconix's default: `[]`.";
      };
      max-jobs = mkOption {
        type = types.nullOr (types.ints.unsigned);
        default = null;
        description = "How many builds run at once; 0 disables local building.\n\nreconix's default: `2`.";
      };
      systems = mkOption {
        type = types.nullOr (types.listOf (types.str));
        default = null;
        description = "Systems this machine builds for.\n\nreconix's default: `[\"x86_64-linux\"]`.";
      };
    };
  };
  RemoteBuilder = types.submodule {
    options = {
      features = mkOption {
        type = types.nullOr (types.listOf (types.str));
        default = null;
        description = "Nix system features it offers (`kvm`, `big-parallel`, …).\n\nreconix's default: `[]`.";
      };
      max-jobs = mkOption {
        type = types.nullOr (types.ints.unsigned);
        default = null;
        description = "How many builds it runs at once; 0 disables it.\n\nreconix's default: `1`.";
      };
      systems = mkOption {
        type = types.nullOr (types.listOf (types.str));
        default = null;
        description = "Systems this builder builds for.\n\nreconix's default: `[\"x86_64-linux\"]`.";
      };
    };
  };
  Repo = types.submodule {
    options = {
      allowlist = mkOption {
        type = types.nullOr (types.listOf (types.str));
        default = null;
        description = "Users whose pull requests are built without checking their permission on the repository.\n\nreconix's default: `[]`.";
      };
      attributes = mkOption {
        type = types.nullOr (types.listOf (types.str));
        default = null;
        description = "Where the jobs are: flake output paths. The categories `packages`, `checks`,\n`devShells` (`<category>.<system>.<name>` for each of `systems`; a nested set is walked\nwhen marked `recurseForDerivations = true`) and `nixosConfigurations` (each\nconfiguration's `config.system.build.toplevel`) keep their meaning. Any other path\n(`hydraJobs`, `ci.reconix`, `herculesCI.onPush.default.outputs`, a quoted\n`'hydraJobs.\"x/y\"'`) is walked as a tree, as Hydra does: every attribute set is\ndescended into, derivations are jobs, `null` is skipped and any other value is an\neval-failed job; under `legacyPackages` (walked for each of `systems`) only sets marked\n`recurseForDerivations` are descended into and other values are skipped. In a walked\ntree a job's system is its derivation's `system`; jobs for other systems than `systems`\nare recorded as `skipped`.\n\nreconix's default: `[\"packages\",\"checks\",\"devShells\",\"nixosConfigurations\"]`.";
      };
      branches = mkOption {
        type = types.nullOr (types.listOf (types.str));
        default = null;
        description = "Globs over short branch names (`main`, `release/*`); `*` does not cross `/`. Empty means\nthe repository's default branch.\n\nreconix's default: `[]`.";
      };
      eval-timeout = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "Longest time one evaluation may take; overrides `evaluation.timeout`.";
      };
      max-silent = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "Longest time one build may go without output before it is stopped.\n\nreconix's default: `\"1h\"`.";
      };
      path = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "The git checkout to build, for local forges only (where it is required). A relative path\nis resolved against the spec file's directory.";
      };
      pull-requests = mkOption {
        type = types.nullOr (types.bool);
        default = null;
        description = "Whether pull (merge) requests are built.\n\nreconix's default: `true`.";
      };
      recurse = mkOption {
        type = types.nullOr (types.enum [ "all" "marked" ]);
        default = null;
        description = "Overrides which sets are descended into: `all` (every set) or `marked` (only sets with\n`recurseForDerivations = true`). Default: `marked` for the categories and\n`legacyPackages`, `all` for other paths.";
      };
      systems = mkOption {
        type = types.nullOr (types.listOf (types.str));
        default = null;
        description = "Systems whose outputs are built.\n\nreconix's default: `[\"x86_64-linux\"]`.";
      };
      timeout = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "Longest time one build may take before it is stopped.\n\nreconix's default: `\"3h\"`.";
      };
    };
  };
  Retention = types.submodule {
    options = {
      collect-garbage = mkOption {
        type = types.nullOr (types.bool);
        default = null;
        description = "Run `nix-store --gc` after a purge released GC roots, so the store shrinks at once.\n\nreconix's default: `false`.";
      };
      keep-last = mkOption {
        type = types.nullOr (types.ints.unsigned);
        default = null;
        description = "How many of the newest evaluations of each branch are always kept.\n\nreconix's default: `3`.";
      };
      logs = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "How long build logs are kept.\n\nreconix's default: `\"90days\"`.";
      };
      max-age = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "Evaluations older than this lose their GC roots (the newest `keep-last` per branch are\nkept regardless).\n\nreconix's default: `\"30days\"`.";
      };
      max-size = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "Oldest evaluations are released until the rooted closure fits this size.";
      };
    };
  };
  Statuses = types.submodule {
    options = {
      collapse-threshold = mkOption {
        type = types.nullOr (types.ints.unsigned);
        default = null;
        description = "Above this many jobs in one evaluation, a single summary status is reported instead of\none per job.\n\nreconix's default: `50`.";
      };
      context-prefix = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "Prefix of every status context, as in `reconix/packages.x86_64-linux.hello`.\n\nreconix's default: `\"reconix\"`.";
      };
      debounce = mkOption {
        type = types.nullOr (types.str);
        default = null;
        description = "Status updates of one commit are batched for this long.\n\nreconix's default: `\"10s\"`.";
      };
    };
  };
in
{
  # Keys whose values are files holding secrets.
  secretKeys = [ "api-token-file" "s3-credentials-file" "signing-key-file" "token-file" "webhook-secret-file" ];
  options = {
    api-token-file = mkOption {
      type = types.nullOr (types.str);
      default = null;
      description = "File holding the bearer token that mutations (rebuild a job, cancel or re-run an\nevaluation) must present. Without it every mutation is refused; pages and the read API\nnever need it.";
    };
    builders = mkOption {
      type = types.nullOr (Builders);
      default = null;
      description = "Machines that run builds.\n\nreconix's default: `{\"heartbeat-timeout\":\"30s\",\"local\":{\"features\":[],\"max-jobs\":2,\"systems\":[\"x86_64-linux\"]},\"remote\":{},\"transient-retries\":2}`.";
    };
    caches = mkOption {
      type = types.nullOr (types.listOf (Cache));
      default = null;
      description = "Binary caches that build results are pushed to.\n\nreconix's default: `[]`.";
    };
    evaluation = mkOption {
      type = types.nullOr (Evaluation);
      default = null;
      description = "Evaluator processes: how many at once, their memory, how long an evaluation may take.\n\nreconix's default: `{\"allow-import-from-derivation\":false,\"max-memory\":\"2 GiB\",\"timeout\":\"1h\"}`.";
    };
    external-url = mkOption {
      type = types.nullOr (types.str);
      default = null;
      description = "Public base URL of this daemon (`https://ci.example.org`): the webhook target and the\nlink in commit statuses. Required when any forge is not `local`.";
    };
    forges = mkOption {
      type = types.nullOr (types.attrsOf (Forge));
      default = null;
      description = "Forges by name; each lists the repositories to build.\n\nreconix's default: `{}`.";
    };
    http = mkOption {
      type = types.nullOr (Http);
      default = null;
      description = "Timeouts and the connection cap of the HTTP server.\n\nreconix's default: `{\"body-timeout\":\"10s\",\"header-timeout\":\"5s\",\"idle-timeout\":\"30s\",\"max-connections\":1024}`.";
    };
    listen = mkOption {
      type = types.nullOr (types.str);
      default = null;
      description = "Address of the HTTP server: status page, JSON API and webhooks.\n\nreconix's default: `\"127.0.0.1:8080\"`.";
    };
    retention = mkOption {
      type = types.nullOr (Retention);
      default = null;
      description = "How long results and logs are kept.\n\nreconix's default: `{\"collect-garbage\":false,\"keep-last\":3,\"logs\":\"90days\",\"max-age\":\"30days\"}`.";
    };
    state-dir = mkOption {
      type = types.nullOr (types.str);
      default = null;
      description = "Directory for the database, build logs and GC roots.\n\nreconix's default: `\"/var/lib/reconix\"`.";
    };
    statuses = mkOption {
      type = types.nullOr (Statuses);
      default = null;
      description = "How results are reported to forges.\n\nreconix's default: `{\"collapse-threshold\":50,\"context-prefix\":\"reconix\",\"debounce\":\"10s\"}`.";
    };
  };
}
