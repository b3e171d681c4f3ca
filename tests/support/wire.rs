//! Raw protocol access for tests that misbehave on purpose.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use builddir_proto::{codec, Hello, HelloReply, Response};

/// A length-prefixed frame around `payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// A blocking raw connection with a read timeout.
pub fn raw(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends a valid hello and reads the reply.
pub fn hello(s: &mut UnixStream) -> HelloReply {
    s.write_all(&frame(&codec::encode(&Hello::current("test")).unwrap()))
        .unwrap();
    read_msg(s).expect("hello reply")
}

/// Reads one frame and decodes it; `None` on EOF or a reset.
pub fn read_msg<T: serde::de::DeserializeOwned>(s: &mut UnixStream) -> Option<T> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload).ok()?;
    Some(codec::decode(&payload).expect("server sends valid messages"))
}

/// Reads until EOF (or error), returning whether the server closed.
pub fn closed(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A response or a clean close: the two acceptable reactions to abuse.
pub fn error_or_close(s: &mut UnixStream) -> Result<Option<Response>, String> {
    match read_msg::<Response>(s) {
        Some(Response::Error(e)) => Ok(Some(Response::Error(e))),
        Some(other) => Err(format!("expected an error, got {other:?}")),
        None => Ok(None),
    }
}
