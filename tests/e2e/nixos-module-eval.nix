# Evaluates nixos/module.nix with nixpkgs' module system (lib.evalModules)
# against stand-ins for the few NixOS options it sets, and renders the socket
# and service to unit-file text. Used by tests/e2e/nixos-module-eval.sh, which
# runs `systemd-analyze verify/security` on the result and compares its
# hardening with systemd/builddird.service.
#
#   nix-instantiate --eval --strict --json tests/e2e/nixos-module-eval.nix \
#       --arg lib 'import /path/to/nixpkgs/lib'
#
# Needs only nixpkgs' lib/ (no packages, no store writes, no network).
{
  lib ? import <nixpkgs/lib>,
  settings ? { },
  extraConfig ? { },
}:

let
  inherit (lib) types mkOption;

  fakeStore = "/nix/store/00000000000000000000000000000000";

  fakePackage = {
    type = "derivation";
    name = "builddird-0.1.0";
    outPath = "${fakeStore}-builddird-0.1.0";
    meta.mainProgram = "builddird";
  };

  # The parts of pkgs the module uses. formats.toml's type is nixpkgs' own
  # definition (a TOML value); generate() returns a fake store path and the
  # JSON of the value is exported separately.
  fakePkgs = {
    callPackage = _: _: fakePackage;
    formats.toml =
      { }:
      {
        type =
          let
            valueType =
              types.nullOr (
                types.oneOf [
                  types.bool
                  types.int
                  types.float
                  types.str
                  types.path
                  (types.attrsOf valueType)
                  (types.listOf valueType)
                ]
              )
              // {
                description = "TOML value";
              };
          in
          valueType;
        generate = name: _value: "${fakeStore}-${name}";
      };
  };

  unitType = types.submodule { freeformType = types.attrsOf types.anything; };

  # Stand-ins for the NixOS options the module defines values for.
  stubs = {
    options = {
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      users.groups = mkOption {
        type = types.attrsOf (types.submodule { });
        default = { };
      };
      nix.settings = mkOption {
        type = types.attrsOf types.anything;
        default = { };
      };
      systemd.tmpfiles.rules = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      systemd.sockets = mkOption {
        type = types.attrsOf unitType;
        default = { };
      };
      systemd.services = mkOption {
        type = types.attrsOf unitType;
        default = { };
      };
    };
  };

  eval = lib.evalModules {
    modules = [
      stubs
      ../../nixos/module.nix
      {
        services.builddird = {
          enable = true;
          inherit settings;
        } // extraConfig;
      }
    ];
    specialArgs.pkgs = fakePkgs;
  };

  cfg = eval.config;

  # systemd's unit syntax, as NixOS writes it (lists become repeated keys).
  value = v: if v == true then "yes" else if v == false then "no" else toString v;
  section =
    name: attrs:
    "[${name}]\n"
    + lib.concatStrings (
      lib.mapAttrsToList (k: v: lib.concatMapStrings (x: "${k}=${value x}\n") (lib.toList v)) attrs
    );

  svc = cfg.systemd.services.builddird;
  sock = cfg.systemd.sockets.builddird;

  serviceText =
    section "Unit" (
      {
        Description = svc.description;
        Requires = svc.requires;
        After = svc.after;
      }
      // svc.unitConfig
    )
    + "\n"
    + section "Service" svc.serviceConfig;

  socketText =
    section "Unit" { Description = sock.description; }
    + "\n"
    + section "Socket" ({ ListenStream = sock.listenStreams; } // sock.socketConfig)
    + "\n"
    + section "Install" { WantedBy = sock.wantedBy; };

  # Mirrors module.nix: null settings are left out of the TOML file.
  renderedSettings = lib.filterAttrs (_: v: v != null) cfg.services.builddird.settings;
in
{
  service = serviceText;
  socket = socketText;
  settings = renderedSettings;
  groups = builtins.attrNames cfg.users.groups;
  tmpfiles = cfg.systemd.tmpfiles.rules;
  packages = map (p: p.name) cfg.environment.systemPackages;
  execStart = svc.serviceConfig.ExecStart;
  nixSettings = cfg.nix.settings;
  # What the module adds to nix-daemon.service (null: nothing).
  nixDaemon =
    let
      d = cfg.systemd.services.nix-daemon or null;
    in
    if d == null then
      null
    else
      {
        wants = d.wants or [ ];
        after = d.after or [ ];
      };
}
