//! Property tests standing in for a fuzzer (cargo-fuzz needs a nightly
//! toolchain): the decoder and the framed connection must turn any byte
//! sequence into a message or an error, never a panic or a hang, and every
//! well-formed message must round-trip.
//!
//! `PROPTEST_CASES=100000 cargo test -p builddir-proto fuzz` runs longer.

use proptest::prelude::*;

use crate::connection::Connection;
use crate::FdPolicy;
use crate::{codec, Hello, HelloReply, Owner, Request, Response};

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            ".{0,300}",
            proptest::option::of((any::<u32>(), any::<u32>()))
        )
            .prop_map(|(name, o)| Request::Allocate {
                limit: None,
                name,
                owner: o.map(|(uid, gid)| Owner { uid, gid })
            }),
        (".{0,40}", any::<bool>()).prop_map(|(id, keep)| Request::Release { id, keep }),
        (any::<bool>(), any::<bool>()).prop_map(|(all, size)| Request::List { all, size }),
        Just(Request::Status),
        ".{0,40}".prop_map(|id| Request::Remove { id }),
        (".{0,40}", any::<u32>(), any::<u32>()).prop_map(|(id, uid, gid)| Request::KeepFor {
            id,
            owner: Owner { uid, gid }
        }),
    ]
}

proptest! {
    #[test]
    fn fuzz_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode::<Hello>(&bytes);
        let _ = codec::decode::<HelloReply>(&bytes);
        let _ = codec::decode::<Request>(&bytes);
        let _ = codec::decode::<Response>(&bytes);
    }

    #[test]
    fn fuzz_requests_round_trip(req in request()) {
        let bytes = codec::encode(&req).unwrap();
        prop_assert_eq!(codec::decode::<Request>(&bytes).unwrap(), req);
    }

    #[test]
    fn fuzz_connection_reads_any_stream_without_panicking(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (a, b) = tokio::net::UnixStream::pair().unwrap();
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut a = a;
                for c in chunks {
                    if a.write_all(&c).await.is_err() {
                        break;
                    }
                }
            });
            let mut conn = Connection::new(b, FdPolicy::Refuse);
            // Read until the stream ends or errors; each read must return.
            loop {
                match tokio::time::timeout(std::time::Duration::from_secs(5), conn.read::<Request>()).await {
                    Ok(Ok(Some(_))) => continue,
                    Ok(Ok(None)) | Ok(Err(_)) => break,
                    Err(_) => panic!("read hung on a closed stream"),
                }
            }
            writer.await.unwrap();
        });
    }
}
