use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use builddir_proto::{Owner, Request, Response};

use crate::{Client, Error};

/// A build directory held from builddird.
///
/// The directory exists while the lease does. Ending it: [`Lease::release`]
/// (deleted in the background), [`Lease::keep`] (moved to the kept area), or
/// drop (the connection closes; the daemon releases it).
#[derive(Debug)]
pub struct Lease {
    client: Client,
    dir: OwnedFd,
    id: String,
    path: PathBuf,
    uid: u32,
    gid: u32,
}

impl Lease {
    pub(crate) async fn allocate(
        mut client: Client,
        name: &str,
        owner: Option<Owner>,
    ) -> Result<Lease, Error> {
        let request = Request::Allocate {
            name: name.to_owned(),
            owner,
        };
        let Response::Allocated(a) = client.call(&request).await? else {
            client.discard_fds();
            return Err(Error::Unexpected("expected an allocation"));
        };
        // The directory's fd rides on the reply's first byte: it is the one
        // descriptor this message claims; anything else is closed.
        let dir = client.take_fd().ok_or(Error::Unexpected(
            "allocation reply came without the directory fd",
        ))?;
        client.discard_fds();
        Ok(Lease {
            client,
            dir,
            id: a.id,
            path: PathBuf::from(a.path),
            uid: a.uid,
            gid: a.gid,
        })
    }

    /// The lease id (16 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The build directory's path (stays valid for the lease's lifetime).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The build directory itself, opened `O_DIRECTORY` by the daemon.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Owner uid and gid of the directory.
    pub fn owner(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }

    /// Returns true if and only if [`Lease::path`] names the directory
    /// [`Lease::dir`] refers to (same device and inode), checked now.
    pub fn path_matches_dir(&self) -> bool {
        let by_fd = rustix::fs::fstat(&self.dir);
        let by_path = rustix::fs::stat(&self.path);
        matches!((by_fd, by_path), (Ok(a), Ok(b)) if a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    }

    /// Ends the lease; the daemon deletes the tree in the background.
    pub async fn release(mut self) -> Result<(), Error> {
        let id = self.id.clone();
        self.client.release(&id, false).await.map(|_| ())
    }

    /// Ends the lease but keeps the tree (for inspecting a failed build);
    /// returns where it now lives.
    pub async fn keep(mut self) -> Result<PathBuf, Error> {
        let id = self.id.clone();
        let released = self.client.release(&id, true).await?;
        released
            .kept_path
            .map(PathBuf::from)
            .ok_or(Error::Unexpected("keep reply without a kept path"))
    }
}
