# The fleet profile's variables from the module options. Shared by the NixOS and Home
# Manager modules, and evaluated by bureau's tests against its Python model, so every
# writer uses exactly the names flywheel-doctor, flywheel-verify and gf-reapi-credhelper
# read. Builtins only: no nixpkgs needed to evaluate it.
cfg:
let
  given = value: value != null && value != "";
  optional = name: value: if given value then { ${name} = value; } else { };
  attic = cfg.attic or { };
  variables =
    { GF_FLYWHEEL_PROFILE_STATE = cfg.state; }
    // optional "GF_BAZEL_SUBSTRATE_MODE" (cfg.substrateMode or null)
    // optional "BAZEL_REMOTE_CACHE" (cfg.remoteCache or null)
    // optional "GF_BAZEL_REMOTE_EXECUTOR" (cfg.executor or null)
    // optional "GF_BAZEL_LOCAL_PROOF" (if cfg.state == "local-proof" then "port-forward" else null)
    // optional "GF_BAZEL_REMOTE_INSTANCE_NAME" (cfg.instanceName or null)
    // optional "GF_BAZEL_CREDENTIAL_HELPER" (cfg.credentialHelper or null)
    // optional "GF_BAZEL_CREDENTIAL_HELPER_TOKEN_FILE" (cfg.credentialHelperTokenFile or null)
    // optional "GF_ATTIC_SERVER" (attic.server or null)
    // optional "GF_ATTIC_CACHE" (attic.cache or null)
    // optional "GF_ATTIC_PUBLIC_KEY" (attic.publicKey or null);
  lines = prefix:
    builtins.concatStringsSep "" (
      map (name: "${prefix}${name}=${variables.${name}}\n") (builtins.attrNames variables)
    );
  header = "# GloriousFlywheel fleet profile (non-secret; never put a token here).\n";
in
{
  inherit variables;
  # /etc/profile.d/gloriousflywheel.sh (NixOS)
  shellScript = header + lines "export ";
  # $HOME/.config/gloriousflywheel/profile.env (Home Manager)
  envFile = header + lines "";
  atticSubstituter =
    if given (attic.server or null) && given (attic.cache or null) && given (attic.publicKey or null)
    then { url = "${attic.server}/${attic.cache}"; publicKey = attic.publicKey; }
    else null;
}
