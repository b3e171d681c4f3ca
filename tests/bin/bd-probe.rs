//! `bd-probe SOCKET [NAME [UID:GID]]`: allocate a lease (for another owner
//! if UID:GID is given) with the async client on a one-worker runtime (so
//! the lease reclaims itself across a daemon restart while we wait), check
//! what arrived, print one JSON line, then hold the lease until stdin closes
//! (then release it). Tests run it as another uid.

use std::io::Read;
use std::os::fd::AsFd;
use std::process::ExitCode;

use rustix::fs::{fstat, fstatvfs, openat, Mode, OFlags, StatVfsMountFlags};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let socket = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| builddir_proto::DEFAULT_SOCKET.into());
    let name = args.get(2).cloned().unwrap_or_else(|| "probe".into());
    let owner = args.get(3).map(|o| {
        let (u, g) = o.split_once(':').expect("owner is UID:GID");
        builddir_client::Owner {
            uid: u.parse().expect("uid"),
            gid: g.parse().expect("gid"),
        }
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let allocated = rt.block_on(async {
        let c = builddir_client::Client::connect(&socket).await?;
        match owner {
            Some(o) => c.allocate_for(&name, o).await,
            None => c.allocate(&name).await,
        }
    });
    let lease = match allocated {
        Ok(l) => l,
        Err(e) => {
            let kind = e.reply().map(|r| r.kind.as_str()).unwrap_or("transport");
            println!(
                "{}",
                serde_json::json!({ "error": e.to_string(), "kind": kind })
            );
            return ExitCode::FAILURE;
        }
    };
    let st = fstat(lease.dir()).expect("fstat on the received fd");
    let vfs = fstatvfs(lease.dir()).expect("fstatvfs on the received fd");
    // Copy a binary into the directory through the fd, then run it by path.
    let exec_ok = (|| -> std::io::Result<bool> {
        let bin = std::fs::read("/bin/true")?;
        let fd = openat(
            lease.dir(),
            "true-copy",
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::EXCL,
            Mode::from_raw_mode(0o755),
        )?;
        let mut file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut file, &bin)?;
        drop(file);
        Ok(std::process::Command::new(lease.path().join("true-copy"))
            .status()?
            .success())
    })();
    let out = serde_json::json!({
        "id": lease.id(),
        "path": lease.path(),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mode": st.st_mode & 0o7777,
        "nosuid": vfs.f_flag.contains(StatVfsMountFlags::NOSUID),
        "nodev": vfs.f_flag.contains(StatVfsMountFlags::NODEV),
        "noexec": vfs.f_flag.contains(StatVfsMountFlags::NOEXEC),
        "path_matches_dir": lease.path_matches_dir(),
        "exec_ok": exec_ok.as_ref().map(|b| *b).unwrap_or(false),
        "exec_error": exec_ok.err().map(|e| e.to_string()),
        "fd_is_dir": rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory,
        "cloexec": rustix::io::fcntl_getfd(lease.dir().as_fd()).map(|f| f.contains(rustix::io::FdFlags::CLOEXEC)).unwrap_or(false),
    });
    println!("{out}");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    match rt.block_on(lease.release()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bd-probe: release failed: {e}");
            ExitCode::FAILURE
        }
    }
}
