use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use builddir_proto::{ErrorKind, Owner, Released, Request, Response, SizeLimit};
use tokio::sync::{mpsc, oneshot};

use crate::{Client, Error};

/// How long a lease keeps trying to reach a restarting daemon.
pub const RECLAIM_PATIENCE: Duration = Duration::from_secs(300);

/// A build directory held from builddird.
///
/// The directory exists while the lease does. Ending it: [`Lease::release`]
/// (deleted in the background), [`Lease::keep`] (moved to the kept area), or
/// drop (the connection closes; the daemon releases it).
///
/// **Across daemon restarts.** Under systemd with the file descriptor store
/// (the shipped units), the lease's connection survives the restart and
/// nothing happens at all. Otherwise the lease notices that its connection
/// closed, reconnects (retrying for up to [`RECLAIM_PATIENCE`]) and reclaims
/// itself with the secret the daemon issued at allocation; the daemon keeps
/// an unclaimed lease for `reclaim_grace_secs` (default 60 s) after it
/// starts, then releases it. The directory, its fd and its path stay the
/// same throughout; the caller does nothing. This needs the lease's runtime
/// to keep running. (The runtime-free [`crate::blocking`] client has no
/// background task: there the caller reclaims explicitly.)
#[derive(Debug)]
pub struct Lease {
    dir: OwnedFd,
    id: String,
    path: PathBuf,
    uid: u32,
    gid: u32,
    keeper: mpsc::Sender<End>,
}

/// A request to the keeper task to end the lease.
#[derive(Debug)]
struct End {
    keep: bool,
    reply: oneshot::Sender<Result<Released, Error>>,
}

impl Lease {
    pub(crate) async fn allocate(
        mut client: Client,
        name: &str,
        owner: Option<Owner>,
        limit: Option<SizeLimit>,
    ) -> Result<Lease, Error> {
        let request = Request::Allocate {
            name: name.to_owned(),
            owner,
            limit,
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
        let (keeper, ends) = mpsc::channel(1);
        tokio::spawn(keep_alive(client, a.id.clone(), a.secret, ends));
        Ok(Lease {
            dir,
            id: a.id,
            path: PathBuf::from(a.path),
            uid: a.uid,
            gid: a.gid,
            keeper,
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
    pub async fn release(self) -> Result<(), Error> {
        self.end(false).await.map(|_| ())
    }

    /// Ends the lease but keeps the tree (for inspecting a failed build);
    /// returns where it now lives.
    pub async fn keep(self) -> Result<PathBuf, Error> {
        self.end(true)
            .await?
            .kept_path
            .map(PathBuf::from)
            .ok_or(Error::Unexpected("keep reply without a kept path"))
    }

    async fn end(self, keep: bool) -> Result<Released, Error> {
        let (reply, answer) = oneshot::channel();
        let lost = || Error::LeaseLost(self.id.clone());
        self.keeper
            .send(End { keep, reply })
            .await
            .map_err(|_| lost())?;
        answer.await.map_err(|_| lost())?
    }
}

/// Owns the lease's connection: ends the lease when asked, and when the
/// daemon goes away, reconnects and reclaims it. Returning drops the
/// connection, which releases the lease (if the daemon still has it).
async fn keep_alive(mut client: Client, id: String, secret: String, mut ends: mpsc::Receiver<End>) {
    loop {
        tokio::select! {
            end = ends.recv() => {
                // `None`: the Lease was dropped.
                let Some(End { keep, reply }) = end else { return };
                let mut result = client.release(&id, keep).await;
                if matches!(&result, Err(Error::Proto(e)) if e.is_disconnect()) {
                    // The daemon went away mid-request: either it never
                    // acted (reclaim, then ask again) or it did (the lease
                    // is gone from the live set: find out where it went).
                    result = match reclaim(client.socket(), &id, &secret).await {
                        Some(mut c) => c.release(&id, keep).await,
                        None => settled(client.socket(), &id, keep).await,
                    };
                }
                let _ = reply.send(result);
                return;
            }
            () = client.closed() => match reclaim(client.socket(), &id, &secret).await {
                Some(c) => client = c,
                None => return,
            },
        }
    }
}

/// After a restart interrupted our release: the lease is no longer live,
/// so the old daemon acted on it. Kept → its path; released → done.
async fn settled(socket: &Path, id: &str, keep: bool) -> Result<Released, Error> {
    let lost = || Error::LeaseLost(id.to_owned());
    let mut client = Client::connect(socket).await.map_err(|_| lost())?;
    let rows = client.list(false, false).await.map_err(|_| lost())?;
    match rows.into_iter().find(|r| r.id == id) {
        Some(r) if keep && r.state == builddir_proto::LeaseState::Kept => Ok(Released {
            id: id.to_owned(),
            kept_path: Some(r.path),
            limit_reached: false,
        }),
        Some(r) if !keep && r.state != builddir_proto::LeaseState::Kept => Ok(Released {
            id: id.to_owned(),
            kept_path: None,
            limit_reached: false,
        }),
        None if !keep => Ok(Released {
            id: id.to_owned(),
            kept_path: None,
            limit_reached: false,
        }),
        _ => Err(lost()),
    }
}

/// Reconnects to `socket` and reclaims lease `id`, retrying while the
/// daemon restarts. `None` if the daemon says the lease is gone, or it
/// stays unreachable for [`RECLAIM_PATIENCE`].
async fn reclaim(socket: &Path, id: &str, secret: &str) -> Option<Client> {
    let deadline = Instant::now() + RECLAIM_PATIENCE;
    let mut pause = Duration::from_millis(50);
    while Instant::now() < deadline {
        if let Ok(mut client) = Client::connect(socket).await {
            match client.reclaim(id, secret).await {
                Ok(()) => return Some(client),
                Err(Error::Server(r)) if r.kind == ErrorKind::NotFound => return None,
                Err(_) => {}
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
    None
}
