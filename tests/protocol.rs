//! Misbehaving peers: each gets a typed error or a
//! closed connection; the daemon keeps serving others and its fd count
//! returns to where it was.

use std::io::{IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::time::Duration;

use builddir_proto::{codec, ErrorKind, Hello, HelloReply, Response, MAGIC};
use builddir_tests::wire::{closed, error_or_close, frame, hello, raw, read_msg};
use builddir_tests::{eventually, require_root, Daemon};
use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// Runs `abuse` against a fresh daemon, then checks that the daemon still
/// serves and that its fd count came back.
fn survives(tag: &str, abuse: impl FnOnce(&Daemon)) {
    let d = Daemon::start(tag);
    // Warm up: the first status builds lazily initialised state.
    assert!(d.ctl(&["status"]).status.success());
    let before = d.fd_count();
    abuse(&d);
    assert!(
        d.ctl(&["status"]).status.success(),
        "daemon stopped serving after {tag}:\n{}",
        d.log_text()
    );
    assert!(
        eventually(Duration::from_secs(5), || d.fd_count() <= before),
        "fd count grew after {tag}: {before} -> {}",
        d.fd_count()
    );
}

/// The connection ends with a `bad-request` error, or just closes.
fn bad_request_or_close(s: &mut std::os::unix::net::UnixStream) {
    if let Some(Response::Error(e)) = error_or_close(s).unwrap() {
        assert_eq!(e.kind, ErrorKind::BadRequest, "{}", e.message);
    }
    assert!(closed(s), "connection left open");
}

fn refused_kind(reply: HelloReply) -> ErrorKind {
    match reply {
        HelloReply::Refused(e) => e.kind,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn garbage_bytes_get_an_error_or_a_close() {
    if !require_root("garbage_bytes_get_an_error_or_a_close") {
        return;
    }
    survives("garbage", |d| {
        let mut s = raw(&d.socket);
        s.write_all(&[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x00])
            .unwrap();
        if let Some(reply) = read_msg::<HelloReply>(&mut s) {
            assert_eq!(refused_kind(reply), ErrorKind::BadRequest);
        }
        assert!(closed(&mut s));
    });
}

#[test]
fn a_truncated_frame_then_close_is_dropped() {
    if !require_root("a_truncated_frame_then_close_is_dropped") {
        return;
    }
    survives("trunc", |d| {
        let mut s = raw(&d.socket);
        s.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(closed(&mut s));
    });
}

#[test]
fn an_oversized_length_prefix_is_refused_without_buffering() {
    if !require_root("an_oversized_length_prefix_is_refused_without_buffering") {
        return;
    }
    survives("huge", |d| {
        for len in [u32::MAX, 64 * 1024 + 1] {
            let mut s = raw(&d.socket);
            s.write_all(&len.to_be_bytes()).unwrap();
            if let Some(reply) = read_msg::<HelloReply>(&mut s) {
                assert_eq!(refused_kind(reply), ErrorKind::BadRequest);
            }
            assert!(closed(&mut s));
        }
        // After the handshake too.
        let mut s = raw(&d.socket);
        assert!(matches!(hello(&mut s), HelloReply::Welcome { .. }));
        s.write_all(&u32::MAX.to_be_bytes()).unwrap();
        bad_request_or_close(&mut s);
    });
}

#[test]
fn a_zero_length_frame_is_a_bad_request() {
    if !require_root("a_zero_length_frame_is_a_bad_request") {
        return;
    }
    survives("zero", |d| {
        let mut s = raw(&d.socket);
        assert!(matches!(hello(&mut s), HelloReply::Welcome { .. }));
        s.write_all(&[0, 0, 0, 0]).unwrap();
        bad_request_or_close(&mut s);
    });
}

#[test]
fn wrong_magic_and_wrong_version_are_refused_with_their_kind() {
    if !require_root("wrong_magic_and_wrong_version_are_refused_with_their_kind") {
        return;
    }
    survives("magic", |d| {
        let mut s = raw(&d.socket);
        let mut h = Hello::current("test");
        h.magic = *b"NOTBUILD";
        s.write_all(&frame(&codec::encode(&h).unwrap())).unwrap();
        let reply = read_msg::<HelloReply>(&mut s).expect("a refusal");
        assert_eq!(refused_kind(reply), ErrorKind::BadRequest);

        let mut s = raw(&d.socket);
        let h = Hello {
            magic: MAGIC,
            min_version: 90,
            max_version: 99,
            client: "future".into(),
        };
        s.write_all(&frame(&codec::encode(&h).unwrap())).unwrap();
        match read_msg::<HelloReply>(&mut s).expect("a refusal") {
            HelloReply::Refused(e) => {
                assert_eq!(e.kind, ErrorKind::UnsupportedVersion);
                assert!(
                    e.message.contains("90..=99") && e.message.contains("upgrade"),
                    "{}",
                    e.message
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(closed(&mut s));
    });
}

#[test]
fn an_unknown_request_variant_is_a_bad_request() {
    if !require_root("an_unknown_request_variant_is_a_bad_request") {
        return;
    }
    survives("unknown", |d| {
        let mut s = raw(&d.socket);
        assert!(matches!(hello(&mut s), HelloReply::Welcome { .. }));
        s.write_all(&frame(&[77])).unwrap();
        bad_request_or_close(&mut s);
    });
}

#[test]
fn fds_sent_by_a_client_are_closed_and_refused() {
    if !require_root("fds_sent_by_a_client_are_closed_and_refused") {
        return;
    }
    survives("fds", |d| {
        let file = std::fs::File::open("/etc/hostname").unwrap();
        for count in [1usize, 3, 253] {
            let s = raw(&d.socket);
            let bytes = frame(&codec::encode(&Hello::current("fds")).unwrap());
            let fds: Vec<_> = (0..count).map(|_| file.as_fd()).collect();
            let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(253))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
            sendmsg(
                &s,
                &[IoSlice::new(&bytes)],
                &mut control,
                SendFlags::empty(),
            )
            .unwrap();
            let mut s = s;
            if let Some(reply) = read_msg::<HelloReply>(&mut s) {
                assert_eq!(refused_kind(reply), ErrorKind::BadRequest, "{count} fds");
            }
            assert!(closed(&mut s), "{count} fds: connection left open");
        }
        // fds on a later byte, after a clean handshake.
        let mut s = raw(&d.socket);
        assert!(matches!(hello(&mut s), HelloReply::Welcome { .. }));
        let req = frame(&codec::encode(&builddir_proto::Request::Status).unwrap());
        s.write_all(&req[..2]).unwrap();
        let one = [file.as_fd()];
        let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&one)));
        sendmsg(
            &s,
            &[IoSlice::new(&req[2..])],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        bad_request_or_close(&mut s);
    });
}

#[test]
fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    if !require_root("a_silent_client_is_dropped_after_the_handshake_timeout") {
        return;
    }
    let d = Daemon::start_with(
        "slow",
        builddir_tests::DaemonOpts {
            config: Some("handshake_timeout_secs = 1\n".into()),
            ..Default::default()
        },
    );
    let mut s = raw(&d.socket);
    let started = std::time::Instant::now();
    if let Some(reply) = read_msg::<HelloReply>(&mut s) {
        assert_eq!(refused_kind(reply), ErrorKind::Busy);
    }
    assert!(closed(&mut s));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
}
