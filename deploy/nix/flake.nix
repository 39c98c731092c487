{
  description = "GloriousFlywheel fleet profile: NixOS and Home Manager modules and the profile tools";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      nixosModules.flywheel-profile = import ./modules/nixos.nix;
      homeManagerModules.flywheel-profile = import ./modules/home-manager.nix;

      packages = forAllSystems (pkgs: rec {
        # flywheel-doctor, flywheel-verify, flywheel-enroll, flywheel-consumer-env and
        # gf-reapi-credhelper from bureau's source: the profile code needs only the
        # standard library, so none of bureau's daemon dependencies come along.
        gloriousflywheel-profile-tools = pkgs.python3Packages.buildPythonApplication {
          pname = "gloriousflywheel-profile-tools";
          version = "0.1.0";
          pyproject = true;
          src = ../..;
          build-system = [ pkgs.python3Packages.setuptools ];
          dontCheckRuntimeDeps = true;
          pythonImportsCheck = [ "bureau.profile.commands" "bureau.profile.credhelper" ];
          postFixup = ''
            for program in $out/bin/*; do
              case "$(basename "$program")" in
                flywheel-*|gf-reapi-credhelper|.flywheel-*|.gf-reapi-credhelper*) ;;
                *) rm "$program" ;;
              esac
            done
          '';
          meta.mainProgram = "flywheel-doctor";
        };
        default = gloriousflywheel-profile-tools;
      });
    };
}
