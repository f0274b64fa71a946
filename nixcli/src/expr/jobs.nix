# Evaluates one job attribute of a flake to its derivation, writing the .drv file.
# `args` is { catch = bool; }, `flake` is `builtins.getFlake <locked ref>`, `path` the attribute
# path as a list of names. crate::workers calls it for each attribute of a worker's chunk.
# Result:
#   { ok = { drvPath; name; system; outputs = { <name> = <path>; }; meta = { … }; }; }
#        (`meta` only when the derivation has one)
#        an aggregate (Hydra's `_hydraAggregate = true`) also has
#        constituents = [ { drvPath = <path>; } | { name = "<job name or glob>"; } … ]
#   { error = "<message>"; }   the value is not a derivation
#   "failed"                   (catch = true only) tryEval caught a throw, a failed assert or a
#                              missing attribute on the way (e.g. a NixOS configuration without `config`)
# With catch = false a failing attribute fails the whole process with its own error.
# Errors tryEval cannot catch (abort, type error, ...) always fail the process: the worker pool
# then knows the failing attribute is the first one not reported.
args: flake: path:
let
  # A missing attribute would escape tryEval; a throw does not, and it keeps the path in the message.
  select =
    path: value: name:
    if builtins.isAttrs value && builtins.hasAttr name value then
      builtins.getAttr name value
    else
      throw "attribute '${name}' missing (looking up '${builtins.concatStringsSep "." path}')";
  # The parts of `meta` reconix uses, each under tryEval so that a broken meta never fails
  # the job: strings and ints as they are, licenses (attrsets or strings, or lists of them) by
  # SPDX id, short or full name, maintainers by name, GitHub handle or e-mail. Anything else is
  # null (or left out of a list).
  metaOf =
    m:
    let
      str = x: if builtins.isString x then x else null;
      int = x: if builtins.isInt x then x else null;
      first = x: if builtins.isList x then (if x == [ ] then null else builtins.head x) else x;
      listOf = x: if builtins.isList x then x else [ x ];
      pick =
        names: x:
        if builtins.isString x then
          x
        else if builtins.isAttrs x then
          builtins.foldl' (found: n: if found == null then str (x.${n} or null) else found) null names
        else
          null;
      strings = names: x: builtins.filter builtins.isString (map (pick names) (listOf x));
      # `none` when the field is missing or broken: null for values, [ ] for lists.
      fieldOr =
        none: f: name:
        let
          r = builtins.tryEval (
            let
              value = if builtins.isAttrs m && builtins.hasAttr name m then f m.${name} else none;
            in
            builtins.deepSeq value value
          );
        in
        if r.success then r.value else none;
      field = fieldOr null;
    in
    {
      description = field str "description";
      homepage = field (h: str (first h)) "homepage";
      license = fieldOr [ ] (strings [ "spdxId" "shortName" "fullName" ]) "license";
      maintainers = fieldOr [ ] (strings [ "name" "github" "email" ]) "maintainers";
      timeout = field int "timeout";
      maxSilent = field int "maxSilent";
      schedulingPriority = field int "schedulingPriority";
    };
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
      }
      # Without `meta`, none is printed (the caller's default): no seven tryEvals per job.
      // (if v ? meta then { meta = metaOf v.meta; } else { })
      // aggregate;
      # Hydra's aggregate jobs: derivation constituents are kept as their drvPath, job names and
      # globs as given (the caller resolves them against the other jobs). Anything else throws, so
      # the job fails with a message naming the constituent's type.
      constituent =
        c:
        if builtins.isString c then
          { name = c; }
        else if builtins.isAttrs c && (c.type or null) == "derivation" then
          { drvPath = c.drvPath; }
        else
          throw "aggregate constituent is neither a derivation nor a job name (a ${builtins.typeOf c})";
      aggregate =
        if (v._hydraAggregate or false) == true then { constituents = map constituent (v.constituents or [ ]); } else { };
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
run path
