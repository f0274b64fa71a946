# Lists the job attribute paths of a flake by walking its job roots, forcing each value only to
# weak head normal form (and a derivation only as far as its `type`): no derivation is
# instantiated here.
# `args` is { units = [ { path = [ "packages" "x86_64-linux" ]; kind = "category"; recurse = "marked";
# top = true; ranges = null; } … ]; … }: the job roots, per-system ones already split by system
# (kind is "nixos", "category" or "tree"; see reconix_spec::Walk; `top` units are descended into
# whatever their marks; `ranges`, when not null, selects `[from, to)` ranges of the value's sorted
# attribute names to walk instead of the value), and `flake` is `builtins.getFlake args.flake` (args.flake is a
# locked flake reference: evaluation is pure). An error tryEval cannot catch (abort, type error)
# fails the whole listing: the caller then lists the units apart.
# Result: a list of attribute paths, each a list of names, e.g. [ "packages" "x86_64-linux" "a" ].
# Each path is a job candidate for jobs.nix: a derivation, a value that is not one (jobs.nix
# names its type), or a part of the tree whose listing failed (tryEval caught a throw there;
# jobs.nix meets the same error and reports it as that part's own eval-failed job). So an error
# in one branch costs that branch, never the others.
args: flake:
let
  isDrv = v: (v.type or null) == "derivation";
  # What callPackage/makeOverridable add next to packages: never jobs.
  isHelper = name: name == "override" || name == "overrideDerivation";
  # The mark itself is not a job.
  isMark = name: name == "recurseForDerivations";
  isFunction = v: builtins.isFunction v || (builtins.isAttrs v && v ? __functor);
  marked = v: (v.recurseForDerivations or false) == true;
  descend = root: v: root.recurse == "all" || marked v;
  children =
    root: path: value:
    builtins.concatMap (name: if isMark name then [ ] else walk root (path ++ [ name ]) value.${name} false) (
      builtins.attrNames value
    );
  # `top` is true for the root itself (and a per-system root's system level): the user named it,
  # so it is descended into whatever its marks.
  visit =
    root: path: value: top:
    if value == null then
      [ ]
    else if builtins.isAttrs value && isDrv value then
      [ path ]
    else if isHelper (builtins.elemAt path (builtins.length path - 1)) && isFunction value then
      [ ]
    else if root.kind == "tree" && root.recurse == "marked" then
      # nixpkgs' convention: only derivations and marked sets matter; the rest of a package set
      # (functions, `lib`, strings…) is skipped.
      if builtins.isAttrs value && !isFunction value && (top || marked value) then children root path value else [ ]
    else if builtins.isAttrs value && !isFunction value && (top || descend root value) then
      children root path value
    else
      # Not a derivation: an eval-failed job that says what it is.
      [ path ];
  walk =
    root: path: value: top:
    let
      # No deepSeq needed: forcing the list forces every child's walk (concatMap forces each
      # sub-list), and the paths themselves cannot fail.
      r = builtins.tryEval (visit root path value top);
    in
    if r.success then r.value else [ path ];
  # Looks a path up, `null` when some name on the way is missing.
  lookup = path: builtins.foldl' (v: name: if builtins.isAttrs v then v.${name} or null else null) flake path;
  perUnit =
    unit:
    let
      r = builtins.tryEval (
        let
          value = lookup unit.path;
          names = builtins.attrNames value;
          # A unit the caller split by name walks only some of its value's names.
          selected = builtins.concatMap (
            r: builtins.genList (i: builtins.elemAt names (builtins.elemAt r 0 + i)) (builtins.elemAt r 1 - builtins.elemAt r 0)
          ) unit.ranges;
        in
        if unit.kind == "nixos" then
          map (
            name:
            unit.path
            ++ [
              name
              "config"
              "system"
              "build"
              "toplevel"
            ]
          ) (if value == null then [ ] else if unit.ranges == null then names else selected)
        else if unit.ranges != null then
          builtins.concatMap (name: if isMark name then [ ] else walk unit (unit.path ++ [ name ]) value.${name} false) selected
        else
          walk unit unit.path value unit.top
      );
    in
    if r.success then r.value else [ unit.path ];
in
builtins.concatMap perUnit args.units
