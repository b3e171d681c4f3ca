//! A framed message connection over a std `UnixStream`: no runtime, no
//! thread, no global state.
//!
//! The same rules as the async `Connection`: every read goes through
//! [`fdpass::recv`] (descriptors arrive close-on-exec, a truncated control
//! message is an error), received descriptors wait in a queue until a
//! message claims them and are closed otherwise, and a side that refuses
//! descriptors closes them at once. Interrupted system calls (`EINTR`) are
//! retried, so a caller's signal handlers do not turn into errors; a socket
//! read timeout (`SO_RCVTIMEO`) becomes [`ProtoError::TimedOut`].

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use serde::{de::DeserializeOwned, Serialize};

use crate::codec::{self, FRAME_HEADER};
use crate::{fdpass, FdPolicy, ProtoError};

/// One end of a builddird connection, blocking.
#[derive(Debug)]
pub struct BlockingConnection {
    stream: UnixStream,
    rbuf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    policy: FdPolicy,
}

impl BlockingConnection {
    /// Wraps a connected (blocking) stream.
    pub fn new(stream: UnixStream, policy: FdPolicy) -> BlockingConnection {
        BlockingConnection {
            stream,
            rbuf: Vec::new(),
            fds: VecDeque::new(),
            policy,
        }
    }

    /// The underlying stream (timeouts, `SO_PEERCRED`, polling).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Reads the next message.
    ///
    /// Returns `Ok(None)` if and only if the peer closed the stream cleanly
    /// between frames; a close inside a frame is [`ProtoError::Truncated`].
    pub fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtoError> {
        loop {
            if let Some(msg) = self.next_frame()? {
                return Ok(Some(msg));
            }
            if self.fill()? == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtoError::Truncated(self.rbuf.len()))
                };
            }
        }
    }

    /// Like [`BlockingConnection::read`], but a clean close is
    /// [`ProtoError::Closed`].
    pub fn expect<T: DeserializeOwned>(&mut self) -> Result<T, ProtoError> {
        self.read()?.ok_or(ProtoError::Closed)
    }

    /// Decodes a whole frame from the buffer, if one is there. An oversized
    /// length prefix fails before any of its bytes are awaited.
    fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtoError> {
        let Some(header) = self.rbuf.get(..FRAME_HEADER) else {
            return Ok(None);
        };
        let mut h = [0u8; FRAME_HEADER];
        h.copy_from_slice(header);
        let len = codec::frame_len(h)?;
        let end = FRAME_HEADER + len;
        if self.rbuf.len() < end {
            return Ok(None);
        }
        let msg = codec::decode(&self.rbuf[FRAME_HEADER..end]);
        self.rbuf.drain(..end);
        msg.map(Some)
    }

    /// Receives more bytes (and descriptors). Returns 0 at end of stream.
    fn fill(&mut self) -> Result<usize, ProtoError> {
        let mut chunk = [0u8; 8192];
        let got = loop {
            match fdpass::recv(self.stream.as_fd(), &mut chunk) {
                Ok(got) => break got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ProtoError::TimedOut)
                }
                Err(source) => {
                    return Err(ProtoError::Io {
                        context: "recvmsg on the socket",
                        source,
                    })
                }
            }
        };
        if got.truncated {
            drop(got.fds);
            return Err(ProtoError::ControlTruncated);
        }
        let n_fds = got.fds.len();
        match self.policy {
            FdPolicy::Refuse if n_fds > 0 => {
                drop(got.fds);
                return Err(ProtoError::UnexpectedFds(n_fds));
            }
            _ => self.fds.extend(got.fds),
        }
        self.rbuf.extend_from_slice(&chunk[..got.bytes]);
        Ok(got.bytes)
    }

    /// Takes the oldest received descriptor not yet claimed.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }

    /// Closes every received descriptor that no message claimed.
    pub fn discard_fds(&mut self) -> usize {
        let n = self.fds.len();
        self.fds.clear();
        n
    }

    /// Sends one message, with `fd` attached to its first byte if given.
    pub fn write<T: Serialize>(
        &mut self,
        msg: &T,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ProtoError> {
        let frame = codec::encode_frame(msg)?;
        let mut sent = 0;
        let mut fd = fd;
        while sent < frame.len() {
            match fdpass::send(self.stream.as_fd(), &frame[sent..], fd) {
                Ok(0) => {
                    return Err(ProtoError::Io {
                        context: "sendmsg on the socket",
                        source: io::ErrorKind::WriteZero.into(),
                    })
                }
                Ok(n) => {
                    sent += n;
                    fd = None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ProtoError::TimedOut)
                }
                Err(source) => {
                    return Err(ProtoError::Io {
                        context: "sendmsg on the socket",
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, Response, MAX_FRAME};
    use std::io::Write;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[test]
    fn message_and_fd_round_trip() {
        let (a, b) = pair();
        let mut tx = BlockingConnection::new(a, FdPolicy::Refuse);
        let mut rx = BlockingConnection::new(b, FdPolicy::Accept);
        let dir = std::fs::File::open("/").unwrap();
        tx.write(&Response::Removed { id: "x".into() }, Some(dir.as_fd()))
            .unwrap();
        let got: Response = rx.expect().unwrap();
        assert_eq!(got, Response::Removed { id: "x".into() });
        let fd = rx.take_fd().expect("the fd came with the message");
        let flags = rustix::io::fcntl_getfd(&fd).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        assert!(rx.take_fd().is_none());
    }

    #[test]
    fn refusing_side_rejects_fds() {
        let (a, b) = pair();
        let mut tx = BlockingConnection::new(a, FdPolicy::Accept);
        let mut rx = BlockingConnection::new(b, FdPolicy::Refuse);
        let dir = std::fs::File::open("/").unwrap();
        tx.write(&Request::Status, Some(dir.as_fd())).unwrap();
        assert!(matches!(
            rx.read::<Request>(),
            Err(ProtoError::UnexpectedFds(1))
        ));
    }

    #[test]
    fn oversized_length_prefix_is_rejected_before_buffering() {
        let (mut a, b) = pair();
        let mut rx = BlockingConnection::new(b, FdPolicy::Refuse);
        a.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes()).unwrap();
        assert!(matches!(rx.read::<Request>(), Err(ProtoError::Frame(_))));
    }

    #[test]
    fn close_mid_frame_is_truncated_and_clean_close_is_none() {
        let (mut a, b) = pair();
        let mut rx = BlockingConnection::new(b, FdPolicy::Refuse);
        a.write_all(&[0, 0, 0, 9, 1]).unwrap();
        drop(a);
        assert!(matches!(
            rx.read::<Request>(),
            Err(ProtoError::Truncated(_))
        ));
        let (a, b) = pair();
        drop(a);
        let mut rx = BlockingConnection::new(b, FdPolicy::Refuse);
        assert!(rx.read::<Request>().unwrap().is_none());
    }

    #[test]
    fn two_frames_in_one_read_and_one_byte_writes_both_decode() {
        let (mut a, b) = pair();
        let mut rx = BlockingConnection::new(b, FdPolicy::Refuse);
        let mut both = codec::encode_frame(&Request::Status).unwrap();
        both.extend(codec::encode_frame(&Request::Metrics).unwrap());
        a.write_all(&both).unwrap();
        assert_eq!(rx.expect::<Request>().unwrap(), Request::Status);
        assert_eq!(rx.expect::<Request>().unwrap(), Request::Metrics);
        let frame = codec::encode_frame(&Request::List {
            all: true,
            size: false,
        })
        .unwrap();
        let writer = std::thread::spawn(move || {
            for byte in frame {
                a.write_all(&[byte]).unwrap();
            }
            a
        });
        assert_eq!(
            rx.expect::<Request>().unwrap(),
            Request::List {
                all: true,
                size: false
            }
        );
        drop(writer.join().unwrap());
    }

    #[test]
    fn a_read_timeout_is_timed_out() {
        let (_a, b) = pair();
        b.set_read_timeout(Some(std::time::Duration::from_millis(20)))
            .unwrap();
        let mut rx = BlockingConnection::new(b, FdPolicy::Accept);
        assert!(matches!(rx.read::<Request>(), Err(ProtoError::TimedOut)));
    }
}
