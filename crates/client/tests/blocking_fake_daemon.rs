//! The runtime-free client against a fake daemon that misbehaves: late
//! replies, replies for another lease, descriptors where none belong, a
//! flood of descriptors, a reply dribbled one byte at a time. Whatever the
//! daemon does, a reply is never paired with the wrong request, a
//! descriptor never outlives the reply it came with, and the process's
//! descriptor count comes back to where it was.

mod fake_daemon;

use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use builddir_client::blocking::Client;
use builddir_client::Error;
use builddir_proto::{codec, fdpass, ProtoError, Released, Request, Response, MAX_FRAME};
use fake_daemon::{allocation, settle_fds_to, FakeDaemon, Next, Peer};

/// Tests here count the process's descriptors: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Allocates `id<n>` and confirms releases correctly; `hook` may answer
/// first (returning true).
fn daemon(mut hook: impl FnMut(&mut Peer, &Request) -> bool + Send + 'static) -> FakeDaemon {
    FakeDaemon::start(1, move |p, req| {
        if !hook(p, &req) {
            match req {
                Request::Allocate { .. } => {
                    let id = format!("id{}", p.n);
                    p.allocated(&id)
                }
                Request::Release { id, keep } => p.released(&id, keep),
                _ => return Next::Hang,
            }
        }
        Next::Continue
    })
}

fn is_dir(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    let st = rustix::fs::fstat(fd).unwrap();
    rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir()
}

#[test]
fn after_a_timeout_a_late_keep_reply_is_not_taken_for_the_next_keeps() {
    let _s = serial();
    let d = daemon(|p, req| {
        if let Request::Release { id, keep } = req {
            if id == "id1" {
                std::thread::sleep(Duration::from_millis(400));
            }
            p.released(id, *keep);
            return true;
        }
        false
    });
    let mut c = Client::connect(&d.socket).unwrap();
    c.set_timeout(Some(Duration::from_millis(150))).unwrap();
    let a = c.allocate_dir("a", None, None).unwrap();
    let b = c.allocate_dir("b", None, None).unwrap();
    assert_eq!((a.id(), b.id()), ("id1", "id2"));
    let first = c.keep_dir(a);
    assert!(
        matches!(first, Err(Error::Proto(ProtoError::TimedOut))),
        "{first:?}"
    );
    std::thread::sleep(Duration::from_millis(400));
    let second = c.keep_dir(b);
    assert!(
        matches!(second, Err(Error::OutOfStep)),
        "keep(b) after a timeout: {second:?}"
    );
    assert!(c.is_out_of_step());
    assert_eq!(
        Error::OutOfStep.to_string(),
        "the connection is out of step: close it and connect again"
    );
}

#[test]
fn after_a_timeout_a_late_allocation_is_not_handed_out_by_the_next_allocate() {
    let _s = serial();
    let d = daemon(|p, req| {
        if matches!(req, Request::Allocate { .. }) && p.n == 1 {
            std::thread::sleep(Duration::from_millis(400));
        }
        false
    });
    let mut c = Client::connect(&d.socket).unwrap();
    c.set_timeout(Some(Duration::from_millis(150))).unwrap();
    let first = c.allocate_dir("a", None, None);
    assert!(
        matches!(first, Err(Error::Proto(ProtoError::TimedOut))),
        "{first:?}"
    );
    std::thread::sleep(Duration::from_millis(400));
    let second = c.allocate_dir("b", None, None);
    assert!(matches!(second, Err(Error::OutOfStep)), "{second:?}");
}

#[test]
fn a_release_reply_for_another_lease_is_an_error_and_breaks_the_connection() {
    let _s = serial();
    let d = daemon(|p, req| {
        if let Request::Release { .. } = req {
            p.released("someone-else", false);
            return true;
        }
        false
    });
    let mut c = Client::connect(&d.socket).unwrap();
    let a = c.allocate_dir("a", None, None).unwrap();
    let r = c.release_dir(a);
    assert!(matches!(r, Err(Error::Unexpected(_))), "{r:?}");
    let again = c.allocate_dir("b", None, None);
    assert!(matches!(again, Err(Error::OutOfStep)), "{again:?}");
}

#[test]
fn a_stray_fd_on_a_release_reply_is_closed_and_never_becomes_a_lease_dir() {
    let _s = serial();
    let d = daemon(|p, req| {
        if let Request::Release { id, .. } = req {
            let file = p.file.try_clone().unwrap();
            let r = Response::Released(Released {
                id: id.clone(),
                kept_path: None,
                limit_reached: false,
            });
            p.send(&r, Some(file.as_fd()));
            return true;
        }
        false
    });
    let mut c = Client::connect(&d.socket).unwrap();
    let file = d.root.join("file");
    let a = c.allocate_dir("a", None, None).unwrap();
    c.release_dir(a).unwrap();
    // The fake daemon itself holds one.
    assert_eq!(settle_fds_to(&file, 1), 1, "the stray fd was kept");
    let b = c.allocate_dir("b", None, None).unwrap();
    assert!(
        is_dir(b.dir()),
        "the second lease's dir_fd is not a directory"
    );
    assert!(b.path_matches_dir());
}

#[test]
fn an_allocation_whose_fd_is_not_a_directory_is_refused() {
    let _s = serial();
    let d = daemon(|p, req| {
        if let Request::Allocate { .. } = req {
            let r = allocation("id1", p.root.display().to_string(), "s");
            let file = p.file.try_clone().unwrap();
            p.send(&r, Some(file.as_fd()));
            return true;
        }
        false
    });
    let mut c = Client::connect(&d.socket).unwrap();
    let r = c.allocate_dir("a", None, None);
    assert!(
        matches!(r, Err(Error::Unexpected(m)) if m.contains("not a directory")),
        "{r:?}"
    );
    assert_eq!(
        settle_fds_to(&d.root.join("file"), 1),
        1,
        "the file's fd was kept"
    );
}

#[test]
fn an_allocation_with_a_nul_in_its_id_or_a_relative_path_is_refused() {
    let _s = serial();
    for (id, path) in [("ab\0cd", None), ("id1", Some("relative/dir"))] {
        let d = daemon(move |p, req| {
            if let Request::Allocate { .. } = req {
                let r = allocation(
                    id,
                    path.map_or_else(|| p.root.display().to_string(), str::to_owned),
                    "s",
                );
                let dir = p.dir.try_clone().unwrap();
                p.send(&r, Some(dir.as_fd()));
                return true;
            }
            false
        });
        let mut c = Client::connect(&d.socket).unwrap();
        let r = c.allocate_dir("a", None, None);
        assert!(
            matches!(r, Err(Error::Unexpected(_))),
            "{id:?} {path:?}: {r:?}"
        );
    }
}

#[test]
fn fds_sent_with_every_byte_of_a_frame_do_not_pile_up_and_go_on_error() {
    let _s = serial();
    let d = FakeDaemon::start(1, |p, _req| {
        // Announce a full frame, then send 200 of its bytes one at a time
        // with four descriptors each, then hang up mid-frame.
        p.write_raw(&(MAX_FRAME as u32).to_be_bytes());
        let file = p.file.try_clone().unwrap();
        for _ in 0..200 {
            use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
            let fds = [file.as_fd(), file.as_fd(), file.as_fd(), file.as_fd()];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut cb = SendAncillaryBuffer::new(&mut space);
            assert!(cb.push(SendAncillaryMessage::ScmRights(&fds)));
            let one = [std::io::IoSlice::new(&[0])];
            if sendmsg(&p.raw, &one, &mut cb, SendFlags::NOSIGNAL).is_err() {
                break;
            }
        }
        Next::Hang
    });
    let mut c = Client::connect(&d.socket).unwrap();
    let r = c.status();
    assert!(matches!(r, Err(Error::Proto(_))), "{r:?}");
    // The fake daemon hung up, closing its own.
    assert_eq!(
        settle_fds_to(&d.root.join("file"), 0),
        0,
        "descriptors left after the failed call"
    );
}

#[test]
fn a_reply_dribbled_byte_by_byte_runs_into_the_per_call_deadline() {
    let _s = serial();
    let d = FakeDaemon::start(1, |p, _req| {
        let r = allocation("dribbled", p.root.display().to_string(), "s");
        let frame = codec::encode_frame(&r).unwrap();
        let dir = p.dir.try_clone().unwrap();
        let _ = fdpass::send(p.raw.as_fd(), &frame[..1], Some(dir.as_fd()));
        for b in &frame[1..] {
            std::thread::sleep(Duration::from_millis(100));
            if std::io::Write::write_all(&mut p.raw, &[*b]).is_err() {
                break;
            }
        }
        Next::Hang
    });
    let mut c = Client::connect(&d.socket).unwrap();
    c.set_timeout(Some(Duration::from_millis(300))).unwrap();
    let started = Instant::now();
    let r = c.allocate_dir("a", None, None);
    let took = started.elapsed();
    assert!(
        matches!(r, Err(Error::Proto(ProtoError::TimedOut))),
        "{r:?} after {took:?}"
    );
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

#[test]
fn keep_for_on_a_protocol_2_daemon_sends_nothing_and_leaves_the_connection_usable() {
    let _s = serial();
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let d = FakeDaemon::start_at(2, 1, move |p, req| {
        log.lock().unwrap().push(format!("{req:?}"));
        match req {
            Request::Allocate { .. } => p.allocated(&format!("id{}", p.n)),
            Request::Release { id, keep } => p.released(&id, keep),
            _ => return Next::Hang,
        }
        Next::Continue
    });
    let mut c = Client::connect(&d.socket).unwrap();
    assert_eq!(c.server_info().protocol_version, 2);
    let a = c.allocate_dir("a", None, None).unwrap();
    let owner = builddir_proto::Owner {
        uid: 1000,
        gid: 1000,
    };
    let r = c.keep_for(a.id(), owner);
    match &r {
        Err(
            e @ Error::TooOld {
                needs: 3, has: 2, ..
            },
        ) => {
            let text = e.to_string();
            assert!(text.contains("upgrade builddird"), "{text}");
        }
        other => panic!("keep_for on a version-2 daemon: {other:?}"),
    }
    assert!(!c.is_out_of_step());
    // The lease is still held: a plain keep ends it.
    let kept = c.keep_dir(a).unwrap();
    assert_eq!(kept.kept_path.as_deref(), Some("/kept/id1"));
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests.iter().all(|r| !r.contains("KeepFor")),
        "{requests:?}"
    );
}

#[test]
fn keep_for_sends_the_owner_and_takes_only_its_own_lease_s_confirmation() {
    let _s = serial();
    let d = daemon(|p, req| match req {
        Request::KeepFor { id, owner } if owner.uid == 1000 && owner.gid == 100 => {
            p.released(id, true);
            true
        }
        Request::KeepFor { .. } => {
            // A confirmation for another lease: never taken for this one.
            p.released("someone-else", true);
            true
        }
        _ => false,
    });
    let mut c = Client::connect(&d.socket).unwrap();
    let a = c.allocate_dir("a", None, None).unwrap();
    let b = c.allocate_dir("b", None, None).unwrap();
    let kept = c
        .keep_dir_for(
            a,
            builddir_proto::Owner {
                uid: 1000,
                gid: 100,
            },
        )
        .unwrap();
    assert_eq!(kept.kept_path.as_deref(), Some("/kept/id1"));
    let wrong = c.keep_dir_for(b, builddir_proto::Owner { uid: 7, gid: 7 });
    assert!(matches!(wrong, Err(Error::Unexpected(_))), "{wrong:?}");
    assert!(c.is_out_of_step());
}
