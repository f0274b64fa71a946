# A stand-in for the few parts of nixpkgs' `lib` that reconix's modules use, so `make test`
# can evaluate them with plain Nix (no nixpkgs can be fetched on the CI machines). Types and
# options become plain attribute sets that daemon/tests/nixos.rs inspects.
rec {
  mkOption = attrs: { _option = true; } // attrs;
  mkEnableOption = name: mkOption {
    type = types.bool;
    default = false;
    description = "Whether to enable ${name}.";
  };
  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  literalExpression = text: {
    _type = "literalExpression";
    inherit text;
  };
  types = {
    str = { name = "str"; };
    bool = { name = "bool"; };
    int = { name = "int"; };
    number = { name = "number"; };
    anything = { name = "anything"; };
    package = { name = "package"; };
    ints = {
      unsigned = { name = "unsignedInt"; };
      positive = { name = "positiveInt"; };
    };
    nullOr = elem: { name = "nullOr"; inherit elem; };
    listOf = elem: { name = "listOf"; inherit elem; };
    attrsOf = elem: { name = "attrsOf"; inherit elem; };
    enum = values: { name = "enum"; inherit values; };
    submodule = module: { name = "submodule"; inherit (module) options; };
  };
  toInt = s: builtins.fromJSON s;
  last = list: builtins.elemAt list (builtins.length list - 1);
  splitString = sep: s: builtins.filter builtins.isString (builtins.split sep s);
  concatStringsSep = builtins.concatStringsSep;
  escapeShellArg = s: "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] s}'";
  optional = cond: x: if cond then [ x ] else [ ];
}
