# builddird and builddir-ctl, built from this repository.
#
#   pkgs.callPackage ./nixos/package.nix { }
#
# The tests are not run here: the integration suites need root, real mounts
# and systemd (they run in the project's CI and in nixos/tests/builddird.nix).
{ lib, rustPlatform }:

let
  workspace = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "builddird";
  inherit (workspace.workspace.package) version;

  # Only what cargo needs, so editing docs or nixos/ does not rebuild.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../crates
      ../tests
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The two binaries; the workspace's test crate is not installed.
  cargoBuildFlags = [
    "--package"
    "builddir-server"
    "--package"
    "builddir-ctl"
  ];

  doCheck = false;

  meta = {
    description = "Root helper daemon that hands out exec-capable, race-free build directories over a Unix socket";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "builddird";
    platforms = lib.platforms.linux;
  };
}
