# NixOS module for builddird.
#
#   imports = [ /path/to/builddird/nixos/module.nix ];
#   services.builddird.enable = true;
#
# The units mirror systemd/builddird.socket and systemd/builddird.service of
# this repository; see docs/systemd.md for why each hardening setting is there
# and why the service deliberately has no private mount namespace.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    mkEnableOption
    mkIf
    mkOption
    literalExpression
    types
    ;

  cfg = config.services.builddird;

  settingsFormat = pkgs.formats.toml { };

  # null means "the daemon's default": such keys are left out of the file
  # (the daemon rejects unknown keys, and TOML has no null).
  configFile = settingsFormat.generate "builddird.toml" (
    lib.filterAttrs (_: v: v != null) cfg.settings
  );
in
{
  options.services.builddird = {
    enable = mkEnableOption "builddird, the root helper daemon that hands out build directories on a dedicated nosuid,nodev,exec mount";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nixos/package.nix { }";
      description = "The builddird package (provides `builddird` and `builddir-ctl`).";
    };

    settings = mkOption {
      description = ''
        builddird configuration, rendered to TOML and passed with `--config`.
        Any key the daemon knows may be set (unknown keys are a start
        failure); the common ones are typed options. A key set to null is
        left out, so the daemon's default applies.
      '';
      default = { };
      example = literalExpression ''
        {
          backing = "tmpfs";
          tmpfs_size = "16g";
          max_leases_per_uid = 256;
        }
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          root = mkOption {
            type = types.str;
            default = "/nix/var/nix/builddird";
            description = ''
              Directory that becomes the dedicated build-dir mount. On NixOS it
              lives next to the Nix daemon's state so build dirs are on the
              same file system as the store's temporary files.
            '';
          };
          backing = mkOption {
            type = types.enum [
              "bind"
              "tmpfs"
              "external"
            ];
            default = "bind";
            description = ''
              How the mount is provided: `bind` (bind `root` onto itself, then
              remount nosuid,nodev,exec), `tmpfs` (a fresh tmpfs of
              `tmpfs_size`), or `external` (you mount `root` yourself; the
              daemon only verifies it).
            '';
          };
          tmpfs_size = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "16g";
            description = "Size of the tmpfs with `backing = \"tmpfs\"` (e.g. `8g`, `50%`).";
          };
        };
      };
    };

    socketGroup = mkOption {
      type = types.str;
      default = "builddir";
      description = ''
        Group that may connect to /run/builddird.sock (the socket is
        root:socketGroup 0660). Add build users and orchestrators to it.
      '';
    };

    operatorGroup = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "wheel";
      description = ''
        Members of this group (and root) are operators: they may list and
        remove every lease. Rendered as `operator_group`. The group is
        declared (merging with an existing one such as wheel). Operators also need socket
        access (socketGroup membership).
      '';
    };

    allowedUsers = mkOption {
      type = types.nullOr (types.listOf types.str);
      default = null;
      example = [ "nixbld" ];
      description = ''
        If set, only these users (and root and operators) may allocate build
        directories. Rendered as `allowed_users`. null: any user that can
        reach the socket.
      '';
    };

    nixDaemon.enable = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Make the Nix daemon take every build's directory from builddird: sets
        `nix.settings.build-dir-helper` to the socket and orders nix-daemon
        after builddird.socket. Needs a Nix with the `build-dir-helper`
        setting (contrib/nix/build-dir-helper.patch of this repository, in
        `nix.package`); an unpatched Nix only warns about an unknown setting
        and keeps using its own TMPDIR. While set, a build fails when
        builddird cannot be reached: the daemon never falls back to TMPDIR.
      '';
    };

    allowedGroups = mkOption {
      type = types.nullOr (types.listOf types.str);
      default = null;
      example = [ "builders" ];
      description = "Like allowedUsers, by group. Rendered as `allowed_groups`.";
    };
  };

  config = mkIf cfg.enable {
    services.builddird.settings = {
      operator_group = mkIf (cfg.operatorGroup != null) cfg.operatorGroup;
      allowed_users = mkIf (cfg.allowedUsers != null) cfg.allowedUsers;
      allowed_groups = mkIf (cfg.allowedGroups != null) cfg.allowedGroups;
    };

    environment.systemPackages = [ cfg.package ];

    nix.settings = mkIf cfg.nixDaemon.enable {
      build-dir-helper = "/run/builddird.sock";
    };
    systemd.services.nix-daemon = mkIf cfg.nixDaemon.enable {
      wants = [ "builddird.socket" ];
      after = [ "builddird.socket" ];
    };

    users.groups = {
      ${cfg.socketGroup} = { };
    }
    // lib.optionalAttrs (cfg.operatorGroup != null) {
      ${cfg.operatorGroup} = { };
    };

    # The root must exist, be a directory owned by root and not group/world
    # writable (the daemon verifies this and refuses to start otherwise).
    systemd.tmpfiles.rules = [ "d ${cfg.settings.root} 0755 root root -" ];

    systemd.sockets.builddird = {
      description = "builddird build-directory helper socket";
      wantedBy = [ "sockets.target" ];
      listenStreams = [ "/run/builddird.sock" ];
      socketConfig = {
        SocketUser = "root";
        SocketGroup = cfg.socketGroup;
        SocketMode = "0660";
        Accept = false;
        RemoveOnStop = true;
      };
    };

    systemd.services.builddird = {
      description = "builddird build-directory helper daemon";
      requires = [ "builddird.socket" ];
      after = [ "builddird.socket" ];
      restartTriggers = [ configFile ];
      unitConfig.RequiresMountsFor = [ cfg.settings.root ];

      # NO private mount namespace (no PrivateTmp, ProtectSystem, ProtectHome,
      # PrivateDevices, ProtectKernel*, ProtectControlGroups, ProtectProc,
      # ReadWritePaths...): the daemon's mount of `root` must be made in the
      # host mount namespace to be visible to builds, operators and
      # `builddir-ctl list`. Protection comes from the capability bounding set
      # and the system-call filter instead. See docs/systemd.md.
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${lib.getExe' cfg.package "builddird"} --config ${configFile}";
        WatchdogSec = "30s";
        Restart = "on-failure";
        RestartSec = "1s";
        TimeoutStopSec = "30s";
        KillMode = "mixed";
        # ~10 000 concurrent leases (one connection each) plus reaper fds.
        LimitNOFILE = 65536;
        # Reserved for keeping leases across restarts (FDSTORE=1, SPEC §8).
        FileDescriptorStoreMax = 16384;
        UMask = "0077";

        NoNewPrivileges = true;
        CapabilityBoundingSet = [
          "CAP_SYS_ADMIN" # mount(2) of root
          "CAP_CHOWN" # fchown outer/build dirs, kept trees
          "CAP_FOWNER" # fchmod, strip setuid bits on users' files
          "CAP_DAC_OVERRIDE" # reap trees users made unwritable
          "CAP_DAC_READ_SEARCH" # descend into users' 0700/0000 dirs
        ];
        AmbientCapabilities = "";
        RestrictSUIDSGID = true;
        RestrictNamespaces = true;
        KeyringMode = "private";

        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service @mount"
          # lease_backend = "project-quota" sets limits with it (on the root's fd).
          "quotactl_fd"
          "~@setuid @resources @keyring @memlock @clock @module @raw-io @reboot @swap @cpu-emulation @debug @obsolete"
          "~chroot pivot_root open_by_handle_at bpf acct quotactl fanotify_init fanotify_mark userfaultfd"
        ];
        SystemCallErrorNumber = "EPERM";
        MemoryDenyWriteExecute = true;
        LockPersonality = true;
        RestrictRealtime = true;
        ProtectClock = true;
        ProtectHostname = true;
        DevicePolicy = "closed";

        RestrictAddressFamilies = [ "AF_UNIX" ];
        # A network namespace only; does not imply a mount namespace.
        PrivateNetwork = true;
        IPAddressDeny = "any";
      };
    };
  };
}
