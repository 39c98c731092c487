# Home Manager: shell variables and $HOME/.config/gloriousflywheel/profile.env. It does not
# touch the Nix daemon's trust: use the NixOS module or the host's settings for that.
{ config, lib, ... }:
let
  cfg = config.programs.gloriousflywheel.profile;
  profile = import ./profile-env.nix cfg;
in
{
  options.programs.gloriousflywheel.profile = import ./options.nix { inherit lib; };

  config = lib.mkIf cfg.enable {
    home.sessionVariables = profile.variables;
    home.file.".config/gloriousflywheel/profile.env".text = profile.envFile;
    home.packages = lib.optional (cfg.toolsPackage != null) cfg.toolsPackage;
  };
}
