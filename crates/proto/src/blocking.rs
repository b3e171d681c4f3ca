//! A framed message connection over a std `UnixStream`: no runtime, no
//! thread, no global state.
//!
//! The same rules as the async `Connection`: every read goes through
//! [`fdpass::recv`] (descriptors arrive close-on-exec, a truncated control
//! message is an error) and a side that refuses descriptors closes them at
//! once. Interrupted system calls (`EINTR`) are retried, so a caller's
//! signal handlers do not turn into errors.
//!
//! Descriptors belong to frames. The sender attaches one to the first byte
//! of a frame it writes in one `sendmsg`, and the kernel ends a `recvmsg`
//! with the bytes that carried descriptors, so a descriptor belongs to the
//! frame holding the last byte of the read it came with. At most one is
//! kept per frame (any more are closed at once, and counted); it is
//! available through [`BlockingConnection::take_fd`] after that frame's
//! message was read, and closed when the next message is read. Every error
//! closes every descriptor not yet taken: nothing received before a failure
//! can be paired with a later message.
//!
//! A deadline ([`BlockingConnection::set_deadline`]) bounds a whole call,
//! not each system call: a peer that dribbles one byte at a time still
//! runs into it. Running out is [`ProtoError::TimedOut`].

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};

use crate::codec::{self, FRAME_HEADER};
use crate::{fdpass, FdPolicy, ProtoError};

/// One end of a builddird connection, blocking.
#[derive(Debug)]
pub struct BlockingConnection {
    stream: UnixStream,
    rbuf: Vec<u8>,
    /// Stream offset of `rbuf[0]`.
    base: u64,
    /// Descriptors received for frames not yet decoded, oldest first: at
    /// most one per frame, so at most two (the frame being read, and one
    /// that began in the same `recvmsg`).
    pending: VecDeque<PendingFd>,
    /// The descriptor that came with the last message read, if any.
    last: Option<OwnedFd>,
    /// How many descriptors came with the last message read (extras were
    /// closed on arrival).
    last_count: usize,
    policy: FdPolicy,
    deadline: Option<Instant>,
    /// True while the socket carries a timeout set for a deadline.
    timeouts_set: bool,
}

/// A received descriptor and the frame it belongs to.
#[derive(Debug)]
struct PendingFd {
    /// Stream offset of the last byte of the read it came with.
    at: u64,
    fd: OwnedFd,
    /// Descriptors that came for that frame (all but `fd` closed).
    count: usize,
}

impl BlockingConnection {
    /// Wraps a connected (blocking) stream.
    pub fn new(stream: UnixStream, policy: FdPolicy) -> BlockingConnection {
        BlockingConnection {
            stream,
            rbuf: Vec::new(),
            base: 0,
            pending: VecDeque::new(),
            last: None,
            last_count: 0,
            policy,
            deadline: None,
            timeouts_set: false,
        }
    }

    /// The underlying stream (`SO_PEERCRED`, polling).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Every later read and write fails with [`ProtoError::TimedOut`] once
    /// `deadline` has passed (`None`: no bound).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Reads the next message.
    ///
    /// Returns `Ok(None)` if and only if the peer closed the stream cleanly
    /// between frames; a close inside a frame is [`ProtoError::Truncated`].
    /// On any error every received descriptor not yet taken is closed.
    pub fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtoError> {
        let result = self.read_inner();
        if result.is_err() {
            self.pending.clear();
            self.discard_fds();
        }
        result
    }

    fn read_inner<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtoError> {
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

    /// The stream offset one past the frame that starts at `rbuf[0]`, if its
    /// header is in.
    fn current_frame_end(&self) -> Result<Option<u64>, ProtoError> {
        let Some(header) = self.rbuf.get(..FRAME_HEADER) else {
            return Ok(None);
        };
        let mut h = [0u8; FRAME_HEADER];
        h.copy_from_slice(header);
        let len = codec::frame_len(h)?;
        Ok(Some(self.base + (FRAME_HEADER + len) as u64))
    }

    /// Decodes a whole frame from the buffer, if one is there, and makes the
    /// descriptor that came with it (if any) the one [`Self::take_fd`]
    /// returns. An oversized length prefix fails before any of its bytes
    /// are awaited.
    fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtoError> {
        let Some(frame_end) = self.current_frame_end()? else {
            return Ok(None);
        };
        let end = usize::try_from(frame_end - self.base).unwrap_or(usize::MAX);
        if self.rbuf.len() < end {
            return Ok(None);
        }
        // The previous message's descriptor, unclaimed, is closed now.
        self.discard_fds();
        while self.pending.front().is_some_and(|p| p.at < frame_end) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if p.at >= self.base {
                self.last = Some(p.fd);
                self.last_count = p.count;
            }
        }
        let msg = codec::decode(&self.rbuf[FRAME_HEADER..end]);
        self.rbuf.drain(..end);
        self.base = frame_end;
        msg.map(Some)
    }

    /// Sets the socket's timeout (read or write side) to the time left
    /// before the deadline; `Err` once it passed. With no deadline, clears
    /// any timeout an earlier one left.
    fn arm(&mut self, read: bool) -> Result<(), ProtoError> {
        let io_err = |source| ProtoError::Io {
            context: "setting the socket timeout",
            source,
        };
        let Some(deadline) = self.deadline else {
            if self.timeouts_set {
                self.stream.set_read_timeout(None).map_err(io_err)?;
                self.stream.set_write_timeout(None).map_err(io_err)?;
                self.timeouts_set = false;
            }
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left == Duration::ZERO {
            return Err(ProtoError::TimedOut);
        }
        self.timeouts_set = true;
        if read {
            self.stream.set_read_timeout(Some(left)).map_err(io_err)
        } else {
            self.stream.set_write_timeout(Some(left)).map_err(io_err)
        }
    }

    /// Receives more bytes (and descriptors). Returns 0 at end of stream.
    fn fill(&mut self) -> Result<usize, ProtoError> {
        let mut chunk = [0u8; 8192];
        let got = loop {
            self.arm(true)?;
            match fdpass::recv(self.stream.as_fd(), &mut chunk) {
                Ok(got) => break got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(transfer_error("recvmsg on the socket", e)),
            }
        };
        if got.truncated {
            drop(got.fds);
            return Err(if at_fd_limit(self.stream.as_fd()) {
                ProtoError::FdLimit
            } else {
                ProtoError::ControlTruncated
            });
        }
        let n_fds = got.fds.len();
        if n_fds > 0 && (self.policy == FdPolicy::Refuse || got.bytes == 0) {
            drop(got.fds);
            return Err(ProtoError::UnexpectedFds(n_fds));
        }
        self.rbuf.extend_from_slice(&chunk[..got.bytes]);
        let mut fds = got.fds.into_iter();
        if let Some(fd) = fds.next() {
            // Only one descriptor per frame is ever claimed: the rest go now.
            drop(fds);
            let at = self.base + self.rbuf.len() as u64 - 1;
            // Everything pending belongs to the frame at rbuf[0] (no whole
            // frame was in the buffer before this read).
            let end = self.current_frame_end()?.unwrap_or(u64::MAX);
            let same_frame = |p: &PendingFd| (p.at < end) == (at < end);
            match self.pending.back_mut() {
                Some(p) if same_frame(p) => p.count += n_fds,
                _ => self.pending.push_back(PendingFd {
                    at,
                    fd,
                    count: n_fds,
                }),
            }
        }
        Ok(got.bytes)
    }

    /// Takes the descriptor that came with the last message read (the
    /// first, if the peer sent several), if it is still there.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.last.take()
    }

    /// How many descriptors came with the last message read (those beyond
    /// the first were closed on arrival).
    pub fn fds_with_last(&self) -> usize {
        self.last_count
    }

    /// Closes the descriptor that came with the last message read, if not
    /// taken; returns how many came with it.
    pub fn discard_fds(&mut self) -> usize {
        self.last = None;
        std::mem::take(&mut self.last_count)
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
            self.arm(false)?;
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
                Err(e) => return Err(transfer_error("sendmsg on the socket", e)),
            }
        }
        Ok(())
    }
}

/// What a failed `sendmsg`/`recvmsg` means to the caller: the timeout
/// [`BlockingConnection::arm`] set on the socket surfaces as `EAGAIN` (or
/// `ETIMEDOUT`), which is the deadline passing, not a broken socket.
fn transfer_error(context: &'static str, e: io::Error) -> ProtoError {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        ProtoError::TimedOut
    } else {
        ProtoError::Io { context, source: e }
    }
}

/// Returns true if the process cannot open one more descriptor
/// (`EMFILE`): then a `MSG_CTRUNC` means the kernel dropped descriptors for
/// want of room in our table, not that the peer sent too many.
fn at_fd_limit(sock: BorrowedFd<'_>) -> bool {
    matches!(
        rustix::io::fcntl_dupfd_cloexec(sock, 0),
        Err(rustix::io::Errno::MFILE)
    )
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
    fn an_fd_belongs_to_the_frame_it_came_with_not_to_an_earlier_one() {
        let (a, b) = pair();
        let mut tx = BlockingConnection::new(a, FdPolicy::Refuse);
        let mut rx = BlockingConnection::new(b, FdPolicy::Accept);
        let dir = std::fs::File::open("/").unwrap();
        tx.write(&Request::Status, None).unwrap();
        tx.write(&Request::Metrics, Some(dir.as_fd())).unwrap();
        assert_eq!(rx.expect::<Request>().unwrap(), Request::Status);
        assert!(
            rx.take_fd().is_none(),
            "the second frame's fd went to the first"
        );
        assert_eq!(rx.expect::<Request>().unwrap(), Request::Metrics);
        assert_eq!(rx.fds_with_last(), 1);
        assert!(rx.take_fd().is_some());
    }

    #[test]
    fn an_unclaimed_fd_is_closed_when_the_next_message_is_read() {
        let (a, b) = pair();
        let mut tx = BlockingConnection::new(a, FdPolicy::Refuse);
        let mut rx = BlockingConnection::new(b, FdPolicy::Accept);
        let dir = std::fs::File::open("/").unwrap();
        tx.write(&Request::Status, Some(dir.as_fd())).unwrap();
        tx.write(&Request::Metrics, None).unwrap();
        assert_eq!(rx.expect::<Request>().unwrap(), Request::Status);
        assert_eq!(rx.expect::<Request>().unwrap(), Request::Metrics);
        assert!(rx.take_fd().is_none());
        assert_eq!(rx.fds_with_last(), 0);
    }

    #[test]
    fn fds_beyond_the_first_of_a_frame_are_counted_and_closed() {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        use std::mem::MaybeUninit;
        let (a, b) = pair();
        let mut rx = BlockingConnection::new(b, FdPolicy::Accept);
        let dir = std::fs::File::open("/").unwrap();
        let fds = [dir.as_fd(), dir.as_fd(), dir.as_fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(3))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        let frame = codec::encode_frame(&Request::Status).unwrap();
        let iov = [std::io::IoSlice::new(&frame)];
        sendmsg(&a, &iov, &mut control, SendFlags::empty()).unwrap();
        assert_eq!(rx.expect::<Request>().unwrap(), Request::Status);
        assert_eq!(rx.fds_with_last(), 3);
        assert!(rx.take_fd().is_some());
        assert!(rx.take_fd().is_none());
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
