# NixOS VM test for builddird (SPEC §7).
#
#   nix-build nixos/tests/builddird.nix                  # <nixpkgs> from NIX_PATH
#   nix-build nixos/tests/builddird.nix --arg pkgs 'import /path/to/nixpkgs { }'
#   nix-build nixos/tests/builddird.nix -A driverInteractive   # debug shell
#
# On a hardened host (/tmp is a noexec tmpfs) an unprivileged user compiles a
# C program and runs it: in /tmp that fails with "Permission denied", under
# `builddir-ctl run` it works. An operator lists everybody's leases, a user
# outside the socket group is refused, and the daemon is socket-activated,
# Type=notify and hardened without a private mount namespace.
{
  pkgs ? import <nixpkgs> { },
}:

let
  # A build that executes what it just produced.
  buildHello = pkgs.writeShellScript "build-hello" ''
    set -eu
    printf '#include <stdio.h>\nint main(void){puts("hello from the build dir");return 0;}\n' > hello.c
    cc -o hello hello.c
    ./hello
    echo "PWD=$PWD"
    echo "TMPDIR=$TMPDIR"
    stat -c 'STAT=%a %U' .
  '';
  # The same build in /tmp.
  buildInTmp = pkgs.writeShellScript "build-in-tmp" ''
    set -eu
    d=$(mktemp -d /tmp/build.XXXXXX)
    cd "$d"
    printf 'int main(void){return 0;}\n' > t.c
    cc -o t t.c
    ./t
  '';
in
pkgs.testers.runNixOSTest {
  name = "builddird";

  nodes.machine =
    { pkgs, ... }:
    {
      imports = [ ../module.nix ];

      services.builddird = {
        enable = true;
        package = pkgs.callPackage ../package.nix { };
        operatorGroup = "builddir-ops";
      };

      users.users = {
        alice = {
          isNormalUser = true;
          extraGroups = [ "builddir" ];
        };
        olga = {
          isNormalUser = true;
          extraGroups = [
            "builddir"
            "builddir-ops"
          ];
        };
        bob = {
          isNormalUser = true;
          extraGroups = [ "builddir" ];
        };
        mallory.isNormalUser = true;
      };

      environment.systemPackages = [ pkgs.stdenv.cc ];
    };

  testScript = ''
    import json

    def as_user(user, cmd):
        return f"su - {user} -c {json.dumps(cmd)}"

    machine.wait_for_unit("multi-user.target")

    with subtest("hardened host: /tmp is a noexec tmpfs"):
        # Mounted here rather than at boot: a boot-time tmpfs on /tmp would
        # hide the test driver's /tmp/xchg and /tmp/shared 9p mounts.
        machine.succeed("mount -t tmpfs -o mode=1777,nosuid,nodev,noexec,size=256m tmpfs /tmp")
        machine.succeed("findmnt -n -o OPTIONS /tmp | grep -qw noexec")

    with subtest("the build fails in /tmp (noexec)"):
        out = machine.fail(as_user("alice", "${buildInTmp} 2>&1"))
        assert "Permission denied" in out, out

    with subtest("socket activation"):
        machine.succeed("systemctl is-active builddird.socket")
        machine.succeed("test \"$(stat -c '%a %G' /run/builddird.sock)\" = '660 builddir'")
        machine.fail("systemctl is-active builddird.service")
        machine.succeed(as_user("alice", "builddir-ctl status"))
        machine.wait_for_unit("builddird.service")
        status = machine.succeed("systemctl show -P StatusText builddird.service")
        assert any(c.isdigit() for c in status), status

    with subtest("no private mount namespace: the mount is in the host namespace"):
        pid = machine.succeed("systemctl show -P MainPID builddird.service").strip()
        machine.succeed(f"test \"$(readlink /proc/{pid}/ns/mnt)\" = \"$(readlink /proc/1/ns/mnt)\"")
        opts = machine.succeed("findmnt -n -o OPTIONS --mountpoint /nix/var/nix/builddird").strip().split(",")
        assert "nosuid" in opts and "nodev" in opts and "noexec" not in opts, opts

    with subtest("the same build works under builddir-ctl run"):
        out = machine.succeed(as_user("alice", "builddir-ctl run --name hello -- ${buildHello}"))
        assert "hello from the build dir" in out, out
        fields = dict(l.split("=", 1) for l in out.splitlines() if "=" in l)
        assert fields["PWD"].startswith("/nix/var/nix/builddird/b/"), out
        assert fields["TMPDIR"] == fields["PWD"], out
        assert fields["STAT"] == "700 alice", out
        machine.succeed(f"test ! -e {fields['PWD']}")

    with subtest("exit status passes through"):
        rc, _ = machine.execute(as_user("alice", "builddir-ctl run -- sh -c 'exit 7'"))
        assert rc == 7, rc

    with subtest("operators see every lease, users only their own"):
        machine.succeed(as_user("alice", "builddir-ctl run --name held-lease -- sleep 120") + " >/dev/null 2>&1 &")
        machine.wait_until_succeeds(as_user("olga", "builddir-ctl list --all") + " | grep -q held-lease")
        machine.succeed(as_user("alice", "builddir-ctl list") + " | grep -q held-lease")
        machine.fail(as_user("bob", "builddir-ctl list") + " | grep -q held-lease")
        machine.fail(as_user("bob", "builddir-ctl list --all"))

    with subtest("users outside the socket group are refused"):
        out = machine.fail(as_user("mallory", "builddir-ctl status 2>&1"))
        assert "ermission denied" in out, out

    with subtest("audit trail in the journal"):
        machine.wait_until_succeeds("journalctl -o json -u builddird.service | grep -q LEASE_ID")

    with subtest("security exposure"):
        print(machine.succeed("systemd-analyze security builddird.service | tail -1"))
  '';
}
