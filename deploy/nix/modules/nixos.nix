# NixOS: session variables, /etc/profile.d/gloriousflywheel.sh, the tools, and Nix trust
# of the Attic substituter when server, cache and public key are all given.
{ config, lib, ... }:
let
  cfg = config.programs.gloriousflywheel.profile;
  profile = import ./profile-env.nix cfg;
in
{
  options.programs.gloriousflywheel.profile = import ./options.nix { inherit lib; };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.state != "shared-cache-backed" || cfg.remoteCache != null;
        message = "programs.gloriousflywheel.profile: shared-cache-backed requires remoteCache";
      }
      {
        assertion = cfg.state != "executor-backed" || (cfg.remoteCache != null && cfg.executor != null);
        message = "programs.gloriousflywheel.profile: executor-backed requires remoteCache and executor";
      }
      {
        assertion = cfg.state != "unattached" || (cfg.remoteCache == null && cfg.executor == null);
        message = "programs.gloriousflywheel.profile: unattached must not set remoteCache or executor";
      }
    ];
    environment.sessionVariables = profile.variables;
    environment.etc."profile.d/gloriousflywheel.sh".text = profile.shellScript;
    environment.systemPackages = lib.optional (cfg.toolsPackage != null) cfg.toolsPackage;
    nix.settings = lib.mkIf (profile.atticSubstituter != null) {
      extra-substituters = [ profile.atticSubstituter.url ];
      extra-trusted-public-keys = [ profile.atticSubstituter.publicKey ];
    };
  };
}
