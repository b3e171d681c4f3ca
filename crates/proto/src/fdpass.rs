//! Synchronous `sendmsg`/`recvmsg` with `SCM_RIGHTS`.
//!
//! These are the only two functions that move bytes on a builddird socket.
//! Because descriptors ride on bytes, reading with plain `read(2)` would
//! silently drop (or, worse, leak into our table) descriptors attached to
//! those bytes; so every read goes through [`recv`], which installs received
//! descriptors close-on-exec (`MSG_CMSG_CLOEXEC`) and reports truncation.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

/// Most descriptors a receive buffer holds. A peer that sends more gets
/// `MSG_CTRUNC` (and the kernel closes the excess).
pub const MAX_FDS_PER_READ: usize = 4;

/// Whether this side accepts descriptors from its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdPolicy {
    /// Queue them for the message that claims them (the client).
    Accept,
    /// Close them at once and fail the read (the daemon).
    Refuse,
}

/// The outcome of one [`recv`].
#[derive(Debug)]
pub struct Received {
    /// Bytes written to the front of the buffer; 0 means end of stream.
    pub bytes: usize,
    /// Descriptors that arrived with these bytes, already close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// True if and only if the kernel set `MSG_CTRUNC`: descriptors were
    /// lost. Those in `fds` arrived anyway and must still be closed.
    pub truncated: bool,
}

/// Receives bytes and any descriptors that come with them.
///
/// Never blocks on a non-blocking socket: returns `WouldBlock` instead.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_READ))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for cmsg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = cmsg {
            fds.extend(rights);
        }
    }
    Ok(Received {
        bytes: msg.bytes,
        fds,
        truncated: msg.flags.contains(ReturnFlags::CTRUNC),
    })
}

/// Sends `bytes`, attaching `fd` (if any) to the first of them.
///
/// Returns how many bytes the kernel took; the descriptor went with them if
/// the count is non-zero. `MSG_NOSIGNAL`: a vanished peer is `EPIPE`, not a
/// signal.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let one;
    if let Some(fd) = fd {
        one = [fd];
        let fitted = control.push(SendAncillaryMessage::ScmRights(&one));
        debug_assert!(fitted, "control buffer sized for one fd");
    }
    Ok(sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    #[test]
    fn fd_arrives_with_bytes_and_is_cloexec() {
        let (a, b) = pair();
        let file = std::fs::File::open("/").unwrap();
        assert_eq!(send(a.as_fd(), b"hi", Some(file.as_fd())).unwrap(), 2);
        let mut buf = [0u8; 8];
        let got = recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..got.bytes], b"hi");
        assert_eq!(got.fds.len(), 1);
        assert!(!got.truncated);
        let flags = rustix::io::fcntl_getfd(&got.fds[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn too_many_fds_is_reported_as_truncated() {
        let (a, b) = pair();
        let file = std::fs::File::open("/").unwrap();
        let many: Vec<BorrowedFd<'_>> = (0..MAX_FDS_PER_READ + 3).map(|_| file.as_fd()).collect();
        let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(16))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&many)));
        sendmsg(&a, &[IoSlice::new(b"x")], &mut control, SendFlags::empty()).unwrap();
        let mut buf = [0u8; 8];
        let got = recv(b.as_fd(), &mut buf).unwrap();
        assert!(got.truncated);
        assert!(got.fds.len() < many.len());
    }
}
