//! A framed message connection over a tokio `UnixStream` that also carries
//! file descriptors.
//!
//! Reads always go through [`fdpass::recv`]; descriptors that arrive are
//! queued until a message claims them ([`Connection::take_fd`]) and closed by
//! [`Connection::discard_fds`] otherwise. A side that never expects
//! descriptors ([`FdPolicy::Refuse`], the daemon) turns any that arrive into
//! [`ProtoError::UnexpectedFds`] after closing them.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use bytes::BytesMut;
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use crate::{codec, fdpass, FdPolicy, ProtoError, MAX_FRAME};

/// One end of a builddird connection.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    codec: LengthDelimitedCodec,
    rbuf: BytesMut,
    fds: VecDeque<OwnedFd>,
    policy: FdPolicy,
}

impl Connection {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream, policy: FdPolicy) -> Connection {
        Connection {
            stream,
            codec: LengthDelimitedCodec::builder()
                .max_frame_length(MAX_FRAME)
                .new_codec(),
            // Grows only while a frame arrives: an idle connection (one per
            // live lease) costs no buffer.
            rbuf: BytesMut::new(),
            fds: VecDeque::new(),
            policy,
        }
    }

    /// The underlying stream (for `SO_PEERCRED` and the like).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Reads the next message.
    ///
    /// Returns `Ok(None)` if and only if the peer closed the stream cleanly
    /// between frames. A close inside a frame is [`ProtoError::Truncated`].
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtoError> {
        loop {
            // `Incomplete` (need more bytes) is `Ok(None)` from the codec;
            // an oversized length prefix is an error right away, before any
            // of the announced bytes are buffered.
            if let Some(frame) = self
                .codec
                .decode(&mut self.rbuf)
                .map_err(ProtoError::Frame)?
            {
                return codec::decode(&frame).map(Some);
            }
            if self.fill().await? == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtoError::Truncated(self.rbuf.len()))
                };
            }
        }
    }

    /// Like [`Connection::read`], but a clean close is [`ProtoError::Closed`].
    pub async fn expect<T: DeserializeOwned>(&mut self) -> Result<T, ProtoError> {
        self.read().await?.ok_or(ProtoError::Closed)
    }

    /// Receives more bytes into the read buffer. Returns 0 at end of stream.
    ///
    /// Waits for readiness first and receives synchronously, so the stack
    /// buffer is never part of the future: an idle connection's pending
    /// read costs a few bytes, not 8 KiB.
    async fn fill(&mut self) -> Result<usize, ProtoError> {
        loop {
            self.stream
                .readable()
                .await
                .map_err(|source| ProtoError::Io {
                    context: "waiting for the socket",
                    source,
                })?;
            match self.try_fill() {
                Err(ProtoError::Io { source, .. })
                    if source.kind() == io::ErrorKind::WouldBlock =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    fn try_fill(&mut self) -> Result<usize, ProtoError> {
        let mut chunk = [0u8; 8192];
        let Connection { stream, fds, .. } = self;
        let got = stream
            .try_io(Interest::READABLE, || {
                fdpass::recv(stream.as_fd(), &mut chunk)
            })
            .map_err(|source| ProtoError::Io {
                context: "recvmsg on the socket",
                source,
            })?;
        let n_fds = got.fds.len();
        if got.truncated {
            drop(got.fds);
            return Err(ProtoError::ControlTruncated);
        }
        match self.policy {
            FdPolicy::Refuse if n_fds > 0 => {
                drop(got.fds);
                return Err(ProtoError::UnexpectedFds(n_fds));
            }
            _ => fds.extend(got.fds),
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
    pub async fn write<T: Serialize>(
        &mut self,
        msg: &T,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ProtoError> {
        // The whole frame in one buffer, sent by one `sendmsg` (the fd on
        // its first byte) unless the socket takes less.
        let frame = codec::encode_frame(msg)?;
        let mut sent = 0;
        let mut fd = fd;
        while sent < frame.len() {
            let stream = &self.stream;
            let n = stream
                .async_io(Interest::WRITABLE, || {
                    fdpass::send(stream.as_fd(), &frame[sent..], fd)
                })
                .await
                .map_err(|source| ProtoError::Io {
                    context: "sendmsg on the socket",
                    source,
                })?;
            if n == 0 {
                return Err(ProtoError::Io {
                    context: "sendmsg on the socket",
                    source: io::ErrorKind::WriteZero.into(),
                });
            }
            sent += n;
            fd = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, Response};
    use tokio::io::AsyncWriteExt;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[tokio::test]
    async fn message_and_fd_round_trip() {
        let (a, b) = pair();
        let mut tx = Connection::new(a, FdPolicy::Refuse);
        let mut rx = Connection::new(b, FdPolicy::Accept);
        let dir = std::fs::File::open("/").unwrap();
        tx.write(&Response::Removed { id: "x".into() }, Some(dir.as_fd()))
            .await
            .unwrap();
        let got: Response = rx.expect().await.unwrap();
        assert_eq!(got, Response::Removed { id: "x".into() });
        assert!(rx.take_fd().is_some());
        assert!(rx.take_fd().is_none());
    }

    #[tokio::test]
    async fn refusing_side_rejects_fds() {
        let (a, b) = pair();
        let mut tx = Connection::new(a, FdPolicy::Accept);
        let mut rx = Connection::new(b, FdPolicy::Refuse);
        let dir = std::fs::File::open("/").unwrap();
        tx.write(&Request::Status, Some(dir.as_fd())).await.unwrap();
        assert!(matches!(
            rx.read::<Request>().await,
            Err(ProtoError::UnexpectedFds(1))
        ));
    }

    #[tokio::test]
    async fn oversized_length_prefix_is_rejected_before_buffering() {
        let (mut a, b) = pair();
        let mut rx = Connection::new(b, FdPolicy::Refuse);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            rx.read::<Request>().await,
            Err(ProtoError::Frame(_))
        ));
    }

    #[tokio::test]
    async fn close_mid_frame_is_truncated_and_clean_close_is_none() {
        let (mut a, b) = pair();
        let mut rx = Connection::new(b, FdPolicy::Refuse);
        a.write_all(&[0, 0, 0, 9, 1]).await.unwrap();
        drop(a);
        assert!(matches!(
            rx.read::<Request>().await,
            Err(ProtoError::Truncated(_))
        ));
        let (a, b) = pair();
        drop(a);
        let mut rx = Connection::new(b, FdPolicy::Refuse);
        assert!(rx.read::<Request>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn one_byte_per_write_still_decodes() {
        let (mut a, b) = pair();
        let mut rx = Connection::new(b, FdPolicy::Refuse);
        let payload = codec::encode(&Request::List {
            all: true,
            size: false,
        })
        .unwrap();
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let writer = tokio::spawn(async move {
            for byte in frame {
                a.write_all(&[byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
            a
        });
        let got: Request = rx.expect().await.unwrap();
        assert_eq!(
            got,
            Request::List {
                all: true,
                size: false
            }
        );
        drop(writer.await.unwrap());
    }
}
