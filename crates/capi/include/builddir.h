/* builddir.h — the C API of libbuilddir, the client library for builddird.
 *
 * builddird hands out build directories on a nosuid,nodev,exec mount, by
 * file descriptor, over a Unix socket; it deletes each tree safely when its
 * lease ends. This library speaks its protocol with no runtime:
 *
 *   - no thread is ever started, no signal handler installed;
 *   - every file descriptor the library creates or returns is close-on-exec
 *     (an exec'd build inherits none of them);
 *   - every call that can fail returns a builddir_status and writes a
 *     one-line, NUL-terminated message (cause and fix) to (err, errlen),
 *     truncated to errlen; err may be NULL. Nothing is ever printed and
 *     nothing aborts; a bug inside the library is caught and reported as
 *     BUILDDIR_ERR_INTERNAL;
 *   - every pointer argument is checked: NULL where a value is required is
 *     BUILDDIR_ERR_INVALID_ARGUMENT;
 *   - strings are UTF-8 (else BUILDDIR_ERR_INVALID_ARGUMENT).
 *
 * Out of step: a call that fails on the wire (the connection broke, a
 * timeout, a reply that is malformed or does not fit the request) leaves
 * the connection unusable, since a late reply could be taken for the next
 * call's answer. Every later call on it but builddir_reconnect and
 * builddir_close fails with BUILDDIR_ERR_IO ("the connection is out of
 * step: close it and connect again"). The daemon's own typed errors
 * (BUILDDIR_ERR_PERMISSION_DENIED, ...) leave it usable.
 *
 * fork(): a connection belongs to the process that made it. The parent goes
 * on using it after fork(); a child that calls anything but builddir_close
 * on it gets BUILDDIR_ERR_INVALID_ARGUMENT (frames from two processes on
 * one socket would interleave). A child is told from its parent by a
 * MADV_WIPEONFORK page (Linux 4.14 and later), so a child that has its
 * parent's PID in another PID namespace is refused too; on older kernels
 * only the PID is compared. Since every descriptor is close-on-exec, a
 * child that execs has none of the library's.
 *
 * Threads: a connection is not thread-safe; use one per thread, or lock.
 *
 * Link with `pkg-config --cflags --libs builddir`.
 *
 * crates/capi/tests/header.rs checks this file against the library: sizes,
 * offsets, values and every function's type; keep them in step.
 */
#ifndef BUILDDIR_H
#define BUILDDIR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BUILDDIR_DEFAULT_SOCKET "/run/builddird.sock"
#define BUILDDIR_ID_MAX 64        /* bytes incl. NUL */
#define BUILDDIR_PATH_MAX 4096    /* bytes incl. NUL */

typedef enum builddir_status {
    BUILDDIR_OK = 0,
    BUILDDIR_ERR_INVALID_ARGUMENT = 1,  /* NULL pointer, bad UTF-8, too long, bad lease,
                                           connection used in a forked child */
    BUILDDIR_ERR_CONNECT = 2,           /* socket missing / refused / unreachable */
    BUILDDIR_ERR_PROTOCOL = 3,          /* handshake failed, version mismatch, malformed reply */
    BUILDDIR_ERR_IO = 4,                /* the connection broke (or timed out) */
    BUILDDIR_ERR_PERMISSION_DENIED = 5, /* the daemon's policy refused (users, groups, owner grants) */
    BUILDDIR_ERR_QUOTA_EXCEEDED = 6,    /* per-user lease/connection limits, or limit above the cap */
    BUILDDIR_ERR_NO_SPACE = 7,          /* the build root is below its free-space minimum */
    BUILDDIR_ERR_INVALID_NAME = 8,      /* name over 255 bytes or with control characters */
    BUILDDIR_ERR_NOT_FOUND = 9,
    BUILDDIR_ERR_BUSY = 10,
    BUILDDIR_ERR_INTERNAL = 11,         /* the daemon's, or a caught panic in the library */
    BUILDDIR_ERR_BAD_REQUEST = 12       /* e.g. a size limit on a daemon without sized leases */
} builddir_status;

typedef struct builddir_conn builddir_conn;          /* opaque; one connection, many leases */

typedef struct builddir_owner  { uint32_t uid; uint32_t gid; } builddir_owner;
typedef struct builddir_limits { uint64_t bytes; uint64_t inodes; } builddir_limits; /* 0 = default */

typedef struct builddir_lease {
    int      dir_fd;                      /* the build dir, O_CLOEXEC; -1 once ended */
    uint32_t uid, gid;                    /* owner of the build dir */
    char     id[BUILDDIR_ID_MAX];
    char     path[BUILDDIR_PATH_MAX];     /* absolute path of the build dir */
} builddir_lease;

typedef struct builddir_outcome {
    char kept_path[BUILDDIR_PATH_MAX];    /* "" unless kept */
    int  limit_reached;                   /* 1 if the build's tree was full (size/inode limit)
                                             when the lease ended, else 0 */
} builddir_outcome;

/* The library version, a static string. */
const char *builddir_version(void);

/* The stable name of a status ("ok", "permission-denied", ...), a static
   string; "unknown" for a value that is not a status. */
const char *builddir_status_str(builddir_status s);

/* socket_path NULL: $BUILDDIR_SOCKET if set, else BUILDDIR_DEFAULT_SOCKET.
   Connects and does the version handshake. The socket fd is close-on-exec.
   On failure *out is NULL. A path longer than a Unix socket address holds
   (107 bytes) is BUILDDIR_ERR_INVALID_ARGUMENT. */
builddir_status builddir_connect(const char *socket_path, builddir_conn **out,
                                 char *err, size_t errlen);

/* name: metadata for listings (UTF-8, may be NULL = ""). owner NULL: the caller itself
   (another owner needs an owner grant in the daemon's config; root may assign any).
   limits NULL (or both 0): the daemon's defaults. On success *out is filled; out->dir_fd
   is owned by the lease and closed by keep/release (or builddir_close): do not close it
   yourself. (Those close the number only if it still refers to the lease's directory,
   by device and inode: if you closed it and that number now names another descriptor of
   the same directory, that one is closed.) On failure out->dir_fd is -1 and out->id
   is "". */
builddir_status builddir_allocate(builddir_conn *conn, const char *name,
                                  const builddir_owner *owner, const builddir_limits *limits,
                                  builddir_lease *out, char *err, size_t errlen);

/* End the lease keeping the tree (handed over to the requesting uid); kept path in outcome.
   outcome may be NULL. Closes lease->dir_fd and sets it to -1 whatever the result. A lease
   not held on this connection (ended already) is BUILDDIR_ERR_INVALID_ARGUMENT. */
builddir_status builddir_keep(builddir_conn *conn, builddir_lease *lease,
                              builddir_outcome *outcome, char *err, size_t errlen);

/* Like builddir_keep, but the tree is handed over to owner->uid:gid instead of the requesting
   uid: an orchestrator that builds for its own clients keeps a failed build for the user who
   asked for it (the Nix daemon: its client's uid). Needs root or an owner grant for that owner,
   as builddir_allocate does, and a daemon speaking protocol 3. Closes lease->dir_fd and sets it
   to -1 whatever the result, except for owner NULL (BUILDDIR_ERR_INVALID_ARGUMENT, nothing
   changes). If the daemon refuses the owner (BUILDDIR_ERR_PERMISSION_DENIED) or is too old for
   this call (BUILDDIR_ERR_PROTOCOL, nothing sent), the lease has not ended: it stays held on
   conn, and builddir_keep or builddir_release end it. Added in library version 0.2.0. */
builddir_status builddir_keep_for(builddir_conn *conn, builddir_lease *lease,
                                  const builddir_owner *owner, builddir_outcome *outcome,
                                  char *err, size_t errlen);

/* End the lease; the tree is deleted in the background. outcome may be NULL.
   Closes lease->dir_fd and sets it to -1 whatever the result. */
builddir_status builddir_release(builddir_conn *conn, builddir_lease *lease,
                                 builddir_outcome *outcome, char *err, size_t errlen);

/* Closes the connection; every lease still held on it is released by the daemon.
   NULL is a no-op. Usable in a parent after fork(); the child must not use the
   connection (documented); since every fd is close-on-exec, an exec'd child has none. */
void builddir_close(builddir_conn *conn);

/* Bounds how long each later call may take in all, request to reply, in milliseconds
   (0: no bound, the default); a daemon that answers a byte at a time runs into it too.
   A call that runs out fails with BUILDDIR_ERR_IO and the connection is out of step
   after it: close it (the daemon then releases its leases) and connect again. */
builddir_status builddir_set_timeout(builddir_conn *conn, uint32_t timeout_ms,
                                     char *err, size_t errlen);

/* After a call failed with BUILDDIR_ERR_IO because the daemon restarted (and it does not
   keep connections in systemd's fd store): connects again to the same socket and takes over
   every lease held on conn, which the daemon keeps for its reclaim grace period. Leases and
   their dir_fds stay valid. Leases the daemon no longer has are dropped from conn (their
   dir_fd closed; ending them is BUILDDIR_ERR_INVALID_ARGUMENT) and counted in *lost (lost
   may be NULL). Use it only after BUILDDIR_ERR_IO: leases still held by a live old
   connection cannot be taken over and count as lost. A lease whose keep or release failed
   on the wire stays held on conn (its dir_fd closed) and is taken over too: end it again
   after. On failure conn keeps its old connection and the call may be retried (leases
   taken over before the failure may then count as lost). */
builddir_status builddir_reconnect(builddir_conn *conn, uint32_t *lost,
                                   char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* BUILDDIR_H */
