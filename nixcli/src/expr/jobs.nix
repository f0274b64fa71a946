# Evaluates some job attributes of a flake to their derivations, writing the .drv files.
# `args` is { catch = bool; ranges = [ [ from to ] … ]; … }, `flake` is `builtins.getFlake args.flake`
# and `all` is the full attribute list computed by names.nix from the same arguments: the ranges select
# `all[from] … all[to - 1]`. (Passing indices rather than names keeps the command line small, far
# below Linux's 128 KiB limit on one argument, and needs no escaping.)
# Result: one element per selected attribute, in order:
#   { ok = { drvPath; name; system; outputs = { <name> = <path>; }; }; }
#   { error = "<message>"; }   the value is not a derivation
#   "failed"                   (catch = true only) tryEval caught a throw, a failed assert or a
#                              missing attribute on the way (e.g. a NixOS configuration without `config`)
# With catch = false a failing target makes the whole evaluation fail with that target's own error.
# Errors tryEval cannot catch (abort, missing attribute, type error, ...) always fail the whole
# evaluation: the caller bisects the target list.
args: flake: all:
let
  targets = builtins.concatMap (
    r: builtins.genList (i: builtins.elemAt all (builtins.elemAt r 0 + i)) (builtins.elemAt r 1 - builtins.elemAt r 0)
  ) args.ranges;
  # A missing attribute would escape tryEval; a throw does not, and it keeps the path in the message.
  select =
    path: value: name:
    if builtins.isAttrs value && builtins.hasAttr name value then
      builtins.getAttr name value
    else
      throw "attribute '${name}' missing (looking up '${builtins.concatStringsSep "." path}')";
  job =
    path:
    let
      v = builtins.foldl' (select path) flake path;
      info = {
        drvPath = v.drvPath;
        name = toString v.name;
        system = toString v.system;
        outputs = builtins.listToAttrs (
          map (o: {
            name = o;
            value = v.${o}.outPath;
          }) (v.outputs or [ "out" ])
        );
      };
    in
    if builtins.isAttrs v && (v.type or null) == "derivation" then
      # deepSeq is essential: tryEval only forces to weak head normal form.
      builtins.deepSeq info { ok = info; }
    else if builtins.isAttrs v then
      # names.nix lists a set only where it was not to be descended into.
      {
        error = "not a derivation (a set without `recurseForDerivations = true`: set it to build the derivations inside, or list this path in `attributes`)";
      }
    else
      { error = "not a derivation (a ${builtins.typeOf v})"; };
  run =
    path:
    if args.catch then
      let
        r = builtins.tryEval (job path);
      in
      if r.success then r.value else "failed"
    else
      job path;
in
map run targets
