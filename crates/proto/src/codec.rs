//! The one place that knows how messages become bytes.
//!
//! bincode 1.3.3 is pinned exactly (its maintainers declared it complete;
//! RUSTSEC-2025-0141 marks it unmaintained; 3.0.0 refuses to compile). The
//! options are explicit so that the encoding never depends on a default:
//! varint integers, little endian, a byte limit equal to the frame cap (a
//! hostile length prefix inside a message cannot make us allocate more than
//! one frame), and trailing bytes rejected. Swapping the format out means
//! changing this file only.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

use crate::{ProtoError, MAX_FRAME};

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .with_limit(MAX_FRAME as u64)
        .reject_trailing_bytes()
}

/// Encodes `msg` into a frame payload.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    options().serialize(msg).map_err(ProtoError::Encode)
}

/// Decodes a whole frame payload into a `T`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtoError> {
    options().deserialize(payload).map_err(ProtoError::Decode)
}

/// Bytes in a frame's length prefix.
pub const FRAME_HEADER: usize = 4;

/// Encodes `msg` as a whole frame: a 4-byte big-endian payload length, then
/// the payload (what the tokio `LengthDelimitedCodec` reads). One buffer,
/// the payload serialized in place behind the header.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let mut frame = Vec::with_capacity(FRAME_HEADER + 120);
    frame.extend_from_slice(&[0; FRAME_HEADER]);
    options()
        .serialize_into(&mut frame, msg)
        .map_err(ProtoError::Encode)?;
    let len = frame.len() - FRAME_HEADER;
    if len > MAX_FRAME {
        return Err(ProtoError::Frame(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("message of {len} bytes exceeds the {MAX_FRAME}-byte frame cap"),
        )));
    }
    frame[..FRAME_HEADER].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// The payload length a frame header announces, rejected above
/// [`MAX_FRAME`] before any of it is read.
pub fn frame_len(header: [u8; FRAME_HEADER]) -> Result<usize, ProtoError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError::Frame(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("peer announced a {len}-byte frame; the cap is {MAX_FRAME}"),
        )));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hello, Request, MAGIC};

    #[test]
    fn round_trips_a_request() {
        let req = Request::Release {
            id: "0123456789abcdef".into(),
            keep: true,
        };
        let bytes = encode(&req).unwrap();
        assert_eq!(decode::<Request>(&bytes).unwrap(), req);
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = encode(&Request::Status).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Request>(&bytes),
            Err(ProtoError::Decode(_))
        ));
    }

    #[test]
    fn rejects_unknown_variant_and_garbage() {
        assert!(decode::<Request>(&[200]).is_err());
        assert!(decode::<Hello>(&[0xff; 3]).is_err());
        assert!(decode::<Request>(&[]).is_err());
    }

    #[test]
    fn a_huge_inner_length_does_not_allocate() {
        // Allocate{name: String} with a string length prefix of u64::MAX.
        let mut bytes = vec![0u8]; // variant 0 = Allocate
        bytes.push(0xff); // varint marker: u64 follows
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Request>(&bytes).is_err());
    }

    #[test]
    fn frames_carry_a_big_endian_length_and_reject_oversize() {
        let frame = encode_frame(&Request::Status).unwrap();
        assert_eq!(&frame[..FRAME_HEADER], &[0, 0, 0, 1]);
        assert_eq!(frame[FRAME_HEADER..], [3]);
        assert_eq!(frame_len([0, 0, 1, 0]).unwrap(), 256);
        assert!(frame_len((MAX_FRAME as u32 + 1).to_be_bytes()).is_err());
    }

    /// The worked examples in docs/protocol.md, byte for byte.
    #[test]
    fn documented_encodings_are_exact() {
        use crate::{ErrorKind, ErrorReply, Owner, Released, Response};
        assert_eq!(
            encode_frame(&Hello::current("c")).unwrap(),
            [0, 0, 0, 12, b'B', b'U', b'I', b'L', b'D', b'D', b'I', b'R', 2, 3, 1, b'c']
        );
        let allocate = Request::Allocate {
            name: "hello".into(),
            owner: Some(Owner {
                uid: 30001,
                gid: 30000,
            }),
            limit: None,
        };
        assert_eq!(
            encode(&allocate).unwrap(),
            [0, 5, b'h', b'e', b'l', b'l', b'o', 1, 0xfb, 0x31, 0x75, 0xfb, 0x30, 0x75, 0]
        );
        let limited = Request::Allocate {
            name: String::new(),
            owner: None,
            limit: Some(crate::SizeLimit {
                bytes: 1 << 30,
                inodes: 0,
            }),
        };
        assert_eq!(
            encode(&limited).unwrap(),
            [0, 0, 0, 1, 0xfc, 0, 0, 0, 0x40, 0]
        );
        let released = Response::Released(Released {
            id: "0123456789abcdef".into(),
            kept_path: None,
            limit_reached: true,
        });
        let mut want = vec![1, 16];
        want.extend_from_slice(b"0123456789abcdef");
        want.extend_from_slice(&[0, 1]);
        assert_eq!(encode(&released).unwrap(), want);
        let error = Response::Error(ErrorReply::new(ErrorKind::PermissionDenied, "no"));
        assert_eq!(encode(&error).unwrap(), [8, 0, 2, b'n', b'o']);
        assert_eq!(
            encode(&Request::Release {
                id: "ab".into(),
                keep: true
            })
            .unwrap(),
            [1, 2, b'a', b'b', 1]
        );
        let keep_for = Request::KeepFor {
            id: "ab".into(),
            owner: Owner {
                uid: 1000,
                gid: 100,
            },
        };
        assert_eq!(
            encode(&keep_for).unwrap(),
            [8, 2, b'a', b'b', 0xfb, 0xe8, 0x03, 100]
        );
    }

    #[test]
    fn hello_round_trips() {
        let h = Hello::current("test");
        let got: Hello = decode(&encode(&h).unwrap()).unwrap();
        assert_eq!(got.magic, MAGIC);
        assert_eq!(got, h);
    }
}
