//! Per-build size limits: with `lease_backend = "tmpfs"` each
//! lease is its own tmpfs, so a runaway build fills only its own tree.
//!
//! Project quotas (`lease_backend = "project-quota"`): here, what the daemon
//! does on a filesystem that cannot enforce them (this suite's kernel has no
//! CONFIG_QFMT_V2, so no ext4 image made with `-O quota,project` mounts).
//! Enforcement itself runs under Debian's own kernel in a VM:
//! `tests/e2e/quota-vm.sh` (a README test command).

use std::os::unix::process::CommandExt;
use std::time::Duration;

use builddir_client::{ErrorKind, SizeLimit};
use builddir_tests::{eventually, require_root, Daemon, DaemonOpts, Probe, USER_A, USER_B};

const MIB: u64 = 1 << 20;

fn tmpfs_leases(tag: &str) -> Daemon {
    Daemon::start_with(
        tag,
        DaemonOpts {
            config: Some(format!(
                "lease_backend = \"tmpfs\"\nlease_size_default = {}\nlease_size_max = {}\nlease_inodes_default = 100000\nlease_inodes_max = 200000\n",
                4 * MIB,
                64 * MIB
            )),
            ..Default::default()
        },
    )
}

/// One lease with its own size limit, from `d`.
fn allocate_limited(
    rt: &tokio::runtime::Runtime,
    d: &Daemon,
    name: &str,
    bytes: u64,
    inodes: u64,
) -> Result<builddir_client::Lease, builddir_client::Error> {
    rt.block_on(async {
        let c = builddir_client::Client::connect(&d.socket).await?;
        c.allocate_limited(name, SizeLimit { bytes, inodes }).await
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_build_writing_past_its_limit_gets_enospc_and_nothing_else_is_affected() {
    if !require_root("tmpfs_enospc") {
        return;
    }
    let d = tmpfs_leases("enospc");
    let host_free = rustix::fs::statvfs("/").unwrap().f_bavail;
    let neighbour = Probe::start(&d.socket, USER_B, "neighbour");
    assert_eq!(neighbour.report["exec_ok"], true, "{}", neighbour.report);
    // The runaway: 8 MiB into a 4 MiB lease (the default).
    let out = d
        .ctl_cmd(&[
            "run",
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero of=big bs=1M count=8 2>&1; echo rc=$?",
        ])
        .uid(USER_A.uid)
        .gid(USER_A.gid)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("No space left on device") && !text.contains("rc=0"),
        "{text}"
    );
    // The daemon logs that the build hit its limit.
    assert!(
        eventually(Duration::from_secs(10), || d
            .log_text()
            .contains("reached its size limit")),
        "{}",
        d.log_text()
    );
    // The neighbour still writes, and the host's root did not lose 8 MiB.
    std::fs::write(neighbour.path().join("fine"), vec![1u8; MIB as usize]).unwrap();
    let host_after = rustix::fs::statvfs("/").unwrap().f_bavail;
    assert!(
        host_free.abs_diff(host_after) * 4096 < 4 * MIB,
        "host free space moved by the build"
    );
    // list shows usage against the limit.
    let rows: serde_json::Value =
        serde_json::from_slice(&d.ctl(&["--json", "list", "--all", "--size"]).stdout).unwrap();
    // (The runaway's record may still be listed, reaping: pick by name.)
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "neighbour")
        .unwrap_or_else(|| panic!("no neighbour row: {rows}"));
    assert_eq!(row["state"], "live", "{row}");
    assert_eq!(row["limit_bytes"], 4 * MIB, "{row}");
    assert!(row["size_bytes"].as_u64().unwrap() >= MIB, "{row}");
    let status: serde_json::Value =
        serde_json::from_slice(&d.ctl(&["--json", "status"]).stdout).unwrap();
    assert!(
        status["backing"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "leases: tmpfs (per-build size limits: default {} bytes / 100000 inodes, at most {} / 200000)",
                4 * MIB,
                64 * MIB
            )),
        "{status}"
    );
    drop(neighbour);
}

#[test]
fn requests_above_the_cap_are_refused_naming_the_cap() {
    if !require_root("tmpfs_cap") {
        return;
    }
    let d = tmpfs_leases("cap");
    let rt = rt();
    let err = allocate_limited(&rt, &d, "too-big", 128 * MIB, 0).unwrap_err();
    let reply = err.reply().expect("a typed error");
    assert_eq!(reply.kind, ErrorKind::QuotaExceeded);
    assert!(
        reply
            .message
            .contains(&format!("lease_size_max = {}", 64 * MIB)),
        "{}",
        reply.message
    );
    // Within the cap: the lease is exactly that big.
    let lease = allocate_limited(&rt, &d, "sized", 16 * MIB, 1000).unwrap();
    let vfs = rustix::fs::fstatvfs(lease.dir()).unwrap();
    assert_eq!(vfs.f_blocks * vfs.f_frsize, 16 * MIB);
    assert_eq!(vfs.f_files, 1000);
    use rustix::fs::StatVfsMountFlags as F;
    assert!(vfs.f_flag.contains(F::NOSUID | F::NODEV) && !vfs.f_flag.contains(F::NOEXEC));
    rt.block_on(lease.release()).unwrap();
}

#[test]
fn reaping_a_100000_file_tmpfs_lease_deletes_its_tree_then_unmounts_it() {
    if !require_root("tmpfs_reap") {
        return;
    }
    let d = tmpfs_leases("reap");
    let rt = rt();
    let lease = allocate_limited(&rt, &d, "many", 32 * MIB, 150_000).unwrap();
    let dir = lease.dir().try_clone_to_owned().unwrap();
    for i in 0..100_000u32 {
        rustix::fs::mknodat(
            &dir,
            format!("f{i}").as_str(),
            rustix::fs::FileType::RegularFile,
            rustix::fs::Mode::RUSR,
            0,
        )
        .unwrap();
    }
    drop(dir);
    let path = lease.path().to_owned();
    rt.block_on(lease.release()).unwrap();
    // The reaper logs after the tree is gone: wait for both.
    assert!(eventually(Duration::from_secs(10), || !path.exists()
        && d.entries("trash").is_empty()
        && d.log_text().contains("removed=")));
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("reaped") && l.contains("removed="))
        .expect("a reap line");
    let removed: u64 = line
        .split("removed=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ms: f64 = line
        .split("elapsed_ms=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!("tmpfs lease with 100000 files: reaped in {ms:.3} ms, {removed} names removed");
    // Its tree is deleted before the tmpfs is unmounted (an unmount alone
    // could leave it alive, full, in another mount namespace): the 100000
    // files, then the outer dir, `build` and `lease.json`.
    assert_eq!(removed, 100_003, "{line}");
    assert!(
        !builddir_tests::unmount_below_exists(&d.root.join("trash")),
        "the lease tmpfs is still mounted"
    );
}

#[test]
fn a_dir_backend_refuses_size_requests_instead_of_ignoring_them() {
    if !require_root("dir_backend_refuses_limits") {
        return;
    }
    let d = Daemon::start("nolimits");
    let err = allocate_limited(&rt(), &d, "wants-limit", 16 * MIB, 0).unwrap_err();
    let reply = err.reply().expect("a typed error");
    assert_eq!(reply.kind, ErrorKind::BadRequest);
    assert!(
        reply.message.contains("lease_backend = \"tmpfs\""),
        "{}",
        reply.message
    );
    let status: serde_json::Value =
        serde_json::from_slice(&d.ctl(&["--json", "status"]).stdout).unwrap();
    assert!(
        status["backing"]
            .as_str()
            .unwrap()
            .contains("no per-build size limit"),
        "{status}"
    );
    let _ = USER_A;
}

/// Mounts a fresh ext4 image made *without* quota support on `d.root`
/// (nosuid,nodev,exec, private), for `backing = "external"`.
fn mount_ext4_without_quotas(d: &Daemon) {
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
    };
    // The image lives in a tmpfs of its own: the host disk (which other
    // tests in this suite watch) does not see mkfs's writes.
    let disk = d.scratch.dir.join("disk");
    std::fs::create_dir(&disk).unwrap();
    run(std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=80m", "builddird-test-disk"])
        .arg(&disk));
    let image = disk.join("ext4.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    run(std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^quota,^project"])
        .arg(&image));
    std::fs::create_dir(&d.root).unwrap();
    run(std::process::Command::new("mount")
        .args(["-o", "loop,nosuid,nodev"])
        .arg(&image)
        .arg(&d.root));
    run(std::process::Command::new("mount")
        .arg("--make-private")
        .arg(&d.root));
}

fn external_with(tag: &str, config: &str) -> Daemon {
    let d = Daemon::prepare(
        tag,
        DaemonOpts {
            backing: "external",
            config: Some(config.to_owned()),
            ..Default::default()
        },
    );
    mount_ext4_without_quotas(&d);
    d
}

#[test]
fn project_quota_backend_refuses_to_start_where_quotas_are_not_enforced() {
    if !require_root("project_quota_refuses_to_start") {
        return;
    }
    let d = external_with("pq-refuse", "lease_backend = \"project-quota\"\n");
    let mut child = d
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = builddir_tests::wait_timeout(&mut child, Duration::from_secs(20))
        .expect("builddird must exit, not serve without quotas");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "it started: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("cannot enforce project quotas: ext4")
            && last.contains("tune2fs -O quota,project")
            && last.contains("prjquota"),
        "{err}"
    );
    // `builddird --check` finds the same thing before any start.
    let out = d.command().arg("--check").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot enforce project quotas: ext4"), "{err}");
}

#[test]
fn a_dir_backend_refuses_sizes_in_one_short_line_and_check_says_why_quotas_are_unavailable() {
    if !require_root("dir_backend_names_quota_reason") {
        return;
    }
    let mut d = external_with("pq-dir", "lease_backend = \"dir\"\n");
    d.spawn();
    let status: serde_json::Value =
        serde_json::from_slice(&d.ctl(&["--json", "status"]).stdout).unwrap();
    let backing = status["backing"].as_str().unwrap();
    // The default backend says what it is in one clause; the reason
    // project quotas are unavailable is for `--check`, not every status.
    assert!(
        backing.ends_with("leases: dir (no per-build size limit)"),
        "{status}"
    );
    let rt = rt();
    let err = allocate_limited(&rt, &d, "wants-limit", 16 * MIB, 0).unwrap_err();
    let reply = err.reply().expect("a typed error");
    assert_eq!(reply.kind, ErrorKind::BadRequest);
    assert!(
        reply.message.contains("lease_backend = \"dir\"")
            && reply.message.contains("builddird --check")
            && !reply.message.contains("tune2fs")
            && reply.message.len() < 300,
        "{}",
        reply.message
    );
    // The same refusal reaches the command line, as one line.
    let out = d.ctl(&["run", "--size", "8M", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("bad-request") && stderr.contains("lease_backend = \"dir\""),
        "{stderr}"
    );
    // `builddird --check` and `builddir-ctl check` give the long reason, in
    // the same words.
    let check = d.command().arg("--check").output().unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(
        said.contains("project quotas unavailable: ext4") && said.contains("tune2fs"),
        "{said}"
    );
    let config = d.scratch.dir.join("ctl-config.toml");
    std::fs::write(
        &config,
        format!(
            "root = {:?}\nbacking = \"external\"\nlease_backend = \"dir\"\n",
            d.root
        ),
    )
    .unwrap();
    let ctl_check = d
        .ctl_cmd(&["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let ctl_said = String::from_utf8_lossy(&ctl_check.stdout);
    let reason = said
        .lines()
        .find(|l| l.contains("project quotas unavailable"))
        .unwrap();
    let reason = &reason[reason.find("project quotas").unwrap()..];
    assert!(
        ctl_said.contains(reason),
        "ctl check:\n{ctl_said}\nbuilddird --check:\n{said}"
    );
    // Unsized leases still work on that filesystem.
    let out = d.ctl(&["run", "--", "sh", "-c", "echo hi > f && cat f"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn tmpfs_leases_are_capped_in_total_and_refused_with_no_space_naming_the_key() {
    if !require_root("tmpfs_total_cap") {
        return;
    }
    let d = Daemon::start_with(
        "tmpfs-cap",
        DaemonOpts {
            config: Some(format!(
                "lease_backend = \"tmpfs\"\nlease_size_default = {}\nlease_size_max = {}\ntmpfs_leases_max_total = {}\n",
                4 * MIB,
                64 * MIB,
                100 * MIB
            )),
            ..Default::default()
        },
    );
    let rt = rt();
    let a = allocate_limited(&rt, &d, "a", 40 * MIB, 1000).expect("first 40 MiB");
    let b = allocate_limited(&rt, &d, "b", 40 * MIB, 1000).expect("second 40 MiB");
    let err = allocate_limited(&rt, &d, "c", 40 * MIB, 1000).unwrap_err();
    let reply = err.reply().expect("a typed error");
    assert_eq!(reply.kind, ErrorKind::NoSpace, "{}", reply.message);
    assert!(
        reply.message.contains("tmpfs_leases_max_total"),
        "{}",
        reply.message
    );
    // A smaller one still fits; after a release (and its reap) the big one.
    let small = allocate_limited(&rt, &d, "small", 16 * MIB, 1000).expect("16 MiB fits");
    rt.block_on(a.release()).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || allocate_limited(
            &rt,
            &d,
            "c-again",
            40 * MIB,
            1000
        )
        .is_ok()),
        "the released lease's memory was never given back"
    );
    drop((b, small));
}
