# Renders `services.reconix.settings` to the spec reconix reads. JSON is YAML, so the text is
# `builtins.toJSON` of the settings without their unset (null) options. With `credentialsDir`,
# every secret file (a key listed in `secretKeys`) is replaced by the path of a systemd
# credential, and `credentials` lists the `LoadCredential=` entries (`ID:ORIGINAL-PATH`) that
# put it there: the service then reads secrets it could not read as its own user.
#
# Plain Nix, no nixpkgs: `make test` evaluates it on the examples (daemon/tests/nixos.rs).
{
  settings,
  secretKeys,
  credentialsDir ? null,
}:
let
  # A credential ID from where the secret sits in the settings, e.g.
  # `forges.github.token-file` -> `forges-github-token-file`.
  credentialId =
    path: builtins.replaceStrings [ "/" ":" " " "." ] [ "_" "_" "_" "_" ] (builtins.concatStringsSep "-" path);

  walk =
    path: value:
    if builtins.isAttrs value then
      let
        names = builtins.filter (n: value.${n} != null) (builtins.attrNames value);
        fields = map (n: {
          name = n;
          result = field (path ++ [ n ]) n value.${n};
        }) names;
      in
      {
        value = builtins.listToAttrs (
          map (f: {
            inherit (f) name;
            value = f.result.value;
          }) fields
        );
        credentials = builtins.concatLists (map (f: f.result.credentials) fields);
      }
    else if builtins.isList value then
      let
        items = builtins.genList (i: walk (path ++ [ (toString i) ]) (builtins.elemAt value i)) (
          builtins.length value
        );
      in
      {
        value = map (r: r.value) items;
        credentials = builtins.concatLists (map (r: r.credentials) items);
      }
    else
      {
        inherit value;
        credentials = [ ];
      };

  field =
    path: name: value:
    if credentialsDir != null && builtins.elem name secretKeys && builtins.isString value then
      let
        id = credentialId path;
      in
      {
        value = "${credentialsDir}/${id}";
        credentials = [ "${id}:${value}" ];
      }
    else
      walk path value;

  result = walk [ ] settings;
in
{
  text = builtins.toJSON result.value + "\n";
  inherit (result) credentials;
}
