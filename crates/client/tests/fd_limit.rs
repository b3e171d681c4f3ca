//! A caller at its own open-file limit: the kernel drops the directory fd
//! an allocation reply carries (`MSG_CTRUNC`). The error names
//! RLIMIT_NOFILE rather than blaming the daemon, and the connection is out
//! of step after it (closing it makes the daemon release the lease). Its
//! own test binary: it lowers the process's descriptor limit.

mod fake_daemon;

use std::os::fd::AsFd;

use builddir_client::blocking::Client;
use builddir_client::Error;
use builddir_proto::{ProtoError, Request};
use fake_daemon::{allocation, open_fds, FakeDaemon, Next};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

#[test]
fn at_the_callers_fd_limit_the_error_names_rlimit_nofile_and_the_connection_is_out_of_step() {
    let d = FakeDaemon::start(1, |p, req| {
        if let Request::Allocate { .. } = req {
            let r = allocation("id1", p.root.display().to_string(), "s");
            // No new descriptor on this side: the process is at its limit.
            let _ = p.conn.write(&r, Some(p.dir.as_fd()));
        }
        Next::Continue
    });
    let mut c = Client::connect(&d.socket).unwrap();
    let before = getrlimit(Resource::Nofile);
    let tight = (open_fds() + 8) as u64;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(tight),
            maximum: before.maximum,
        },
    )
    .unwrap();
    let mut hold = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hold.push(f);
    }
    let r = c.allocate_dir("a", None, None);
    drop(hold);
    setrlimit(Resource::Nofile, before).unwrap();
    assert!(matches!(r, Err(Error::Proto(ProtoError::FdLimit))), "{r:?}");
    let message = r.unwrap_err().to_string();
    assert!(message.contains("RLIMIT_NOFILE"), "{message}");
    let next = c.status();
    assert!(matches!(next, Err(Error::OutOfStep)), "{next:?}");
}
