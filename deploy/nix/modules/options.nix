# programs.gloriousflywheel.profile options, as the seed names them; shared by both modules.
{ lib }:
let
  inherit (lib) mkEnableOption mkOption types;
  text = description: mkOption { type = types.nullOr types.str; default = null; inherit description; };
in
{
  enable = mkEnableOption "the GloriousFlywheel fleet profile (non-secret attachment settings)";
  state = mkOption {
    type = types.enum [ "unattached" "shared-cache-backed" "executor-backed" "local-proof" ];
    default = "unattached";
    description = "GF_FLYWHEEL_PROFILE_STATE: how this machine is attached to the shared substrate.";
  };
  substrateMode = mkOption {
    type = types.nullOr (types.enum [ "shared-cache-backed" "executor-backed" ]);
    default = null;
    description = "GF_BAZEL_SUBSTRATE_MODE, the wrapper-facing Bazel mode; must agree with state.";
  };
  remoteCache = text "BAZEL_REMOTE_CACHE: the remote cache endpoint (grpc, grpcs, http or https).";
  executor = text "GF_BAZEL_REMOTE_EXECUTOR: the REAPI executor endpoint (executor-backed).";
  instanceName = text "GF_BAZEL_REMOTE_INSTANCE_NAME: the REAPI instance_name.";
  credentialHelper = text "GF_BAZEL_CREDENTIAL_HELPER: host=/path/to/gf-reapi-credhelper.";
  credentialHelperTokenFile = text
    "GF_BAZEL_CREDENTIAL_HELPER_TOKEN_FILE: where the helper reads the short-lived token (never the token itself).";
  toolsPackage = mkOption {
    type = types.nullOr types.package;
    default = null;
    description = "The profile tools (flywheel-doctor, flywheel-verify, gf-reapi-credhelper) to install.";
  };
  attic = {
    server = text "GF_ATTIC_SERVER: the Attic server URL (public trust material).";
    cache = text "GF_ATTIC_CACHE: the Attic cache name.";
    publicKey = text "GF_ATTIC_PUBLIC_KEY: the cache's public key, NAME:BASE64.";
  };
}
