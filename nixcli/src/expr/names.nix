# Lists the job attribute paths of a flake without evaluating any job (attrNames forces nothing).
# `args` is { categories = [ "packages" … ]; systems = [ "x86_64-linux" … ]; … } and `flake` is
# `builtins.getFlake args.flake` (args.flake is a locked flake reference: evaluation is pure).
# Result: a list of attribute paths, each a list of names, e.g. [ "packages" "x86_64-linux" "a" ].
args: flake:
let
  perCategory =
    category:
    if category == "nixosConfigurations" then
      map (name: [
        category
        name
        "config"
        "system"
        "build"
        "toplevel"
      ]) (builtins.attrNames (flake.${category} or { }))
    else
      builtins.concatMap (
        system: map (name: [ category system name ]) (builtins.attrNames ((flake.${category} or { }).${system} or { }))
      ) args.systems;
in
builtins.concatMap perCategory args.categories
