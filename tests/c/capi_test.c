/* capi_test: exercises libbuilddir against a running builddird.
 *
 *   capi_test SCENARIO SOCKET [ARGS...]
 *
 * Prints "ok: CHECK" for each check that holds; at the first that does not,
 * prints "FAIL: file:line: CHECK: detail" and exits 1. Driven by
 * tests/capi.rs, which runs it as root and as an unprivileged uid, also
 * built with -fsanitize=address,undefined.
 */
#define _GNU_SOURCE
#include <builddir.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (cond) {                                                           \
            printf("ok: %s\n", #cond);                                        \
        } else {                                                              \
            printf("FAIL: %s:%d: %s: ", __FILE__, __LINE__, #cond);           \
            printf(__VA_ARGS__);                                              \
            printf("\n");                                                     \
            fflush(stdout);                                                   \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

#define ST(s) builddir_status_str(s)

static char err[512];

/* ---- descriptors ---------------------------------------------------- */

#define MAX_FDS 256
typedef struct { int n; int fd[MAX_FDS]; } fdset;

static fdset open_fds(void) {
    fdset s = {0, {0}};
    DIR *d = opendir("/proc/self/fd");
    if (!d) { perror("opendir"); exit(2); }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        int fd = atoi(e->d_name);
        if (fd != dirfd(d) && s.n < MAX_FDS) s.fd[s.n++] = fd;
    }
    closedir(d);
    return s;
}

static int has(const fdset *s, int fd) {
    for (int i = 0; i < s->n; i++)
        if (s->fd[i] == fd) return 1;
    return 0;
}

static void fd_target(int fd, char *buf, size_t len) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, len - 1);
    buf[n < 0 ? 0 : n] = '\0';
}

/* Every descriptor opened since `base` is close-on-exec. */
static void check_new_fds_cloexec(const fdset *base) {
    fdset now = open_fds();
    for (int i = 0; i < now.n; i++) {
        if (has(base, now.fd[i])) continue;
        int flags = fcntl(now.fd[i], F_GETFD);
        char t[PATH_MAX];
        fd_target(now.fd[i], t, sizeof t);
        CHECK(flags >= 0 && (flags & FD_CLOEXEC), "fd %d (%s) lacks FD_CLOEXEC", now.fd[i], t);
    }
}

/* The descriptor table is exactly `base` again. */
static void check_fds_back_to(const fdset *base) {
    fdset now = open_fds();
    for (int i = 0; i < now.n; i++) {
        char t[PATH_MAX];
        fd_target(now.fd[i], t, sizeof t);
        CHECK(has(base, now.fd[i]), "fd %d (%s) is still open", now.fd[i], t);
    }
    CHECK(now.n == base->n, "%d fds open, %d at the start", now.n, base->n);
}

/* Threads in this process (the library must start none). */
static int threads(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static int gone(const char *path) {
    struct stat st;
    return lstat(path, &st) != 0 && errno == ENOENT;
}

/* Polls for up to 10 s for `path` to vanish. */
static int eventually_gone(const char *path) {
    for (int i = 0; i < 500; i++) {
        if (gone(path)) return 1;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static void write_file_at(int dirfd, const char *name, const char *text, mode_t mode) {
    int fd = openat(dirfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, mode);
    CHECK(fd >= 0, "openat %s: %s", name, strerror(errno));
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text), "write: %s", strerror(errno));
    close(fd);
}

/* Copies /bin/true into the build dir through its fd. */
static void copy_true_at(int dirfd, const char *name) {
    int in = open("/bin/true", O_RDONLY | O_CLOEXEC);
    CHECK(in >= 0, "open /bin/true: %s", strerror(errno));
    int out = openat(dirfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0755);
    CHECK(out >= 0, "openat %s: %s", name, strerror(errno));
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0)
        CHECK(write(out, buf, n) == n, "write: %s", strerror(errno));
    close(in);
    close(out);
}

static int run(const char *path) {
    pid_t pid = fork();
    if (pid == 0) {
        execl(path, path, (char *)NULL);
        _exit(127);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    return status;
}

static builddir_conn *connect_ok(const char *socket) {
    builddir_conn *c = NULL;
    builddir_status s = builddir_connect(socket, &c, err, sizeof err);
    CHECK(s == BUILDDIR_OK && c != NULL, "connect: %s: %s", ST(s), err);
    return c;
}

static void allocate_ok(builddir_conn *c, const char *name, const builddir_owner *owner,
                        const builddir_limits *limits, builddir_lease *l) {
    builddir_status s = builddir_allocate(c, name, owner, limits, l, err, sizeof err);
    CHECK(s == BUILDDIR_OK, "allocate %s: %s: %s", name, ST(s), err);
    CHECK(l->dir_fd >= 0, "dir_fd %d", l->dir_fd);
    CHECK(fcntl(l->dir_fd, F_GETFD) & FD_CLOEXEC, "dir_fd %d", l->dir_fd);
    CHECK(l->path[0] == '/', "path %s", l->path);
    CHECK(strlen(l->id) > 0, "empty id");
    struct stat by_fd, by_path;
    CHECK(fstat(l->dir_fd, &by_fd) == 0 && S_ISDIR(by_fd.st_mode), "fstat: %s", strerror(errno));
    CHECK(stat(l->path, &by_path) == 0 && by_path.st_ino == by_fd.st_ino && by_path.st_dev == by_fd.st_dev,
          "path %s is not the dir the fd names", l->path);
    CHECK(by_fd.st_uid == l->uid && by_fd.st_gid == l->gid, "dir owned by %u:%u, lease says %u:%u",
          by_fd.st_uid, by_fd.st_gid, l->uid, l->gid);
}

/* ---- scenarios ------------------------------------------------------ */

/* allocate / write / exec in the dir / keep / release; several leases on
   one connection; closing the connection releases what is left. */
static int basic(const char *socket) {
    fdset base = open_fds();
    builddir_conn *c = connect_ok(socket);
    check_new_fds_cloexec(&base);

    builddir_lease a, b, d;
    allocate_ok(c, "capi-basic-a", NULL, NULL, &a);
    CHECK(a.uid == getuid() && a.gid == getgid(), "owner %u:%u, caller %u:%u", a.uid, a.gid, getuid(), getgid());
    write_file_at(a.dir_fd, "hello.txt", "hello\n", 0644);
    char p[BUILDDIR_PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/hello.txt", a.path);
    CHECK(access(p, R_OK) == 0, "%s: %s", p, strerror(errno));
    copy_true_at(a.dir_fd, "true-copy");
    snprintf(p, sizeof p, "%s/true-copy", a.path);
    int st = run(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exec %s in the build dir: status %d", p, st);

    allocate_ok(c, "capi-basic-b", NULL, NULL, &b);
    allocate_ok(c, "capi-basic-d", NULL, NULL, &d);
    CHECK(strcmp(a.id, b.id) != 0 && strcmp(b.id, d.id) != 0, "ids %s %s %s", a.id, b.id, d.id);
    CHECK(threads() == 1, "%d threads: the library started some", threads());
    check_new_fds_cloexec(&base);

    builddir_outcome o;
    memset(&o, 'x', sizeof o);
    char a_path[BUILDDIR_PATH_MAX];
    strcpy(a_path, a.path);
    builddir_status s = builddir_release(c, &a, &o, err, sizeof err);
    CHECK(s == BUILDDIR_OK, "release: %s: %s", ST(s), err);
    CHECK(a.dir_fd == -1, "dir_fd %d after release", a.dir_fd);
    CHECK(o.kept_path[0] == '\0' && o.limit_reached == 0, "outcome %.20s %d", o.kept_path, o.limit_reached);
    CHECK(gone(a_path), "%s still there after release", a_path);
    /* Releasing one lease left the others alone. */
    CHECK(access(b.path, F_OK) == 0 && access(d.path, F_OK) == 0, "b or d vanished");
    write_file_at(b.dir_fd, "log", "build log\n", 0644);

    s = builddir_keep(c, &b, &o, err, sizeof err);
    CHECK(s == BUILDDIR_OK, "keep: %s: %s", ST(s), err);
    CHECK(b.dir_fd == -1, "dir_fd %d after keep", b.dir_fd);
    CHECK(o.kept_path[0] == '/' && strcmp(o.kept_path, b.path) != 0, "kept path %s", o.kept_path);
    snprintf(p, sizeof p, "%s/log", o.kept_path);
    struct stat kst;
    CHECK(stat(p, &kst) == 0 && kst.st_uid == getuid(), "kept %s: %s", p, strerror(errno));

    s = builddir_release(c, &b, NULL, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT && strlen(err) > 0, "second end: %s: %s", ST(s), err);

    check_new_fds_cloexec(&base);
    char d_path[BUILDDIR_PATH_MAX];
    strcpy(d_path, d.path);
    builddir_close(c); /* still holds d: the daemon releases it */
    CHECK(eventually_gone(d_path), "%s survived its connection", d_path);
    check_fds_back_to(&base);
    return 0;
}

/* A root orchestrator allocates for a build user; keep hands the tree to
   the requester. */
static int owner(const char *socket, unsigned uid, unsigned gid) {
    fdset base = open_fds();
    builddir_conn *c = connect_ok(socket);
    builddir_owner who = {uid, gid};
    builddir_lease l;
    allocate_ok(c, "capi-owner", &who, NULL, &l);
    CHECK(l.uid == uid && l.gid == gid, "owner %u:%u, asked %u:%u", l.uid, l.gid, uid, gid);
    builddir_outcome o;
    builddir_status s = builddir_keep(c, &l, &o, err, sizeof err);
    CHECK(s == BUILDDIR_OK, "keep: %s: %s", ST(s), err);
    struct stat st;
    CHECK(stat(o.kept_path, &st) == 0 && st.st_uid == getuid(), "kept %s owned by %u", o.kept_path, st.st_uid);
    builddir_close(c);
    check_fds_back_to(&base);
    return 0;
}

/* keep_for: the tree is handed over to `to`, not to the caller (root, or an
   owner grant); a refused owner leaves the lease held, to be ended after.
   build_uid 0: the caller's own lease (owner NULL). */
static int keep_for(const char *socket, unsigned build_uid, unsigned build_gid,
                    unsigned to_uid, unsigned to_gid, int expect_ok) {
    fdset base = open_fds();
    builddir_conn *c = connect_ok(socket);
    builddir_owner build = {build_uid, build_gid}, to = {to_uid, to_gid};
    builddir_lease l;
    allocate_ok(c, "capi-keep-for", build_uid ? &build : NULL, NULL, &l);
    int fd = l.dir_fd;
    builddir_outcome o;
    builddir_status s = builddir_keep_for(c, &l, NULL, &o, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT && strstr(err, "owner"), "NULL owner: %s: %s", ST(s), err);
    CHECK(l.dir_fd == fd && fcntl(fd, F_GETFD) >= 0, "NULL owner touched the lease (dir_fd %d)", l.dir_fd);
    char path[BUILDDIR_PATH_MAX];
    strcpy(path, l.path);
    s = builddir_keep_for(c, &l, &to, &o, err, sizeof err);
    CHECK(l.dir_fd == -1, "dir_fd %d after keep_for", l.dir_fd);
    if (expect_ok) {
        CHECK(s == BUILDDIR_OK, "keep_for: %s: %s", ST(s), err);
        struct stat st;
        CHECK(stat(o.kept_path, &st) == 0 && st.st_uid == to_uid && st.st_gid == to_gid,
              "kept %s owned by %u:%u, wanted %u:%u", o.kept_path, st.st_uid, st.st_gid, to_uid, to_gid);
        CHECK(gone(path), "%s still at the lease path", path);
    } else {
        CHECK(s == BUILDDIR_ERR_PERMISSION_DENIED && strstr(err, "owner_grants"), "keep_for: %s: %s", ST(s), err);
        /* Still held: it ends by release. */
        CHECK(access(path, F_OK) == 0, "%s gone after a refused keep_for", path);
        s = builddir_release(c, &l, NULL, err, sizeof err);
        CHECK(s == BUILDDIR_OK, "release after a refused keep_for: %s: %s", ST(s), err);
        CHECK(eventually_gone(path), "%s not deleted", path);
    }
    builddir_close(c);
    check_fds_back_to(&base);
    return 0;
}

/* A build that fills its size limit gets ENOSPC, and release says so. */
static int limit(const char *socket, unsigned long long bytes) {
    fdset base = open_fds();
    builddir_conn *c = connect_ok(socket);
    builddir_limits lim = {bytes, 0};
    builddir_lease l;
    allocate_ok(c, "capi-limit", NULL, &lim, &l);
    int fd = openat(l.dir_fd, "fill", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    CHECK(fd >= 0, "openat: %s", strerror(errno));
    static char chunk[65536];
    memset(chunk, 'z', sizeof chunk);
    unsigned long long written = 0;
    int werr = 0;
    while (written < 4 * bytes) {
        ssize_t n = write(fd, chunk, sizeof chunk);
        if (n < 0) { werr = errno; break; }
        written += (unsigned long long)n;
    }
    close(fd);
    CHECK(werr == ENOSPC || werr == EDQUOT, "wrote %llu of a %llu-byte limit, error %s", written, bytes, strerror(werr));
    builddir_outcome o;
    builddir_status s = builddir_release(c, &l, &o, err, sizeof err);
    CHECK(s == BUILDDIR_OK, "release: %s: %s", ST(s), err);
    CHECK(o.limit_reached == 1, "limit_reached %d after ENOSPC", o.limit_reached);

    /* The same limit, not filled: not reported. */
    allocate_ok(c, "capi-limit-2", NULL, &lim, &l);
    write_file_at(l.dir_fd, "small", "x", 0644);
    s = builddir_release(c, &l, &o, err, sizeof err);
    CHECK(s == BUILDDIR_OK && o.limit_reached == 0, "release: %s: %s limit_reached %d", ST(s), err, o.limit_reached);
    builddir_close(c);
    check_fds_back_to(&base);
    return 0;
}

/* No daemon at `socket`. */
static int down(const char *socket) {
    fdset base = open_fds();
    builddir_conn *c = (builddir_conn *)&base; /* must be reset to NULL */
    builddir_status s = builddir_connect(socket, &c, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_CONNECT, "connect to nothing: %s: %s", ST(s), err);
    CHECK(c == NULL, "out not NULL on failure");
    CHECK(strstr(err, socket) != NULL, "message does not name the socket: %s", err);
    check_fds_back_to(&base);
    return 0;
}

/* The daemon's policy refuses this user. */
static int refused(const char *socket) {
    fdset base = open_fds();
    builddir_conn *c = NULL;
    builddir_status s = builddir_connect(socket, &c, err, sizeof err);
    if (s == BUILDDIR_OK) {
        builddir_lease l;
        s = builddir_allocate(c, "capi-refused", NULL, NULL, &l, err, sizeof err);
        CHECK(l.dir_fd == -1, "dir_fd %d on failure", l.dir_fd);
        builddir_close(c);
    }
    CHECK(s == BUILDDIR_ERR_PERMISSION_DENIED, "%s: %s", ST(s), err);
    CHECK(strlen(err) > 0, "no message");
    check_fds_back_to(&base);
    return 0;
}

/* The daemon restarts (without the fd store) while two leases are held:
   the next call fails with BUILDDIR_ERR_IO, builddir_reconnect takes both
   over, and they work as before. The driver restarts the daemon when this
   prints "RESTART NOW" and writes a line to stdin when it is back. */
static int reconnect(const char *socket) {
    fdset base = open_fds();
    builddir_conn *c = connect_ok(socket);
    builddir_lease a, b;
    allocate_ok(c, "capi-reconnect-a", NULL, NULL, &a);
    allocate_ok(c, "capi-reconnect-b", NULL, NULL, &b);
    printf("RESTART NOW\n");
    fflush(stdout);
    char line[16];
    CHECK(fgets(line, sizeof line, stdin) != NULL, "driver did not answer");
    builddir_lease x;
    builddir_status s = builddir_allocate(c, "after-restart", NULL, NULL, &x, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_IO, "call on the dead connection: %s: %s", ST(s), err);
    uint32_t lost = 99;
    s = builddir_reconnect(c, &lost, err, sizeof err);
    CHECK(s == BUILDDIR_OK && lost == 0, "reconnect: %s: %s (lost %u)", ST(s), err, lost);
    check_new_fds_cloexec(&base);
    write_file_at(a.dir_fd, "still-mine", "yes\n", 0644);
    CHECK(access(a.path, F_OK) == 0 && access(b.path, F_OK) == 0, "a lease vanished");
    char a_path[BUILDDIR_PATH_MAX];
    strcpy(a_path, a.path);
    builddir_outcome o;
    s = builddir_release(c, &a, &o, err, sizeof err);
    CHECK(s == BUILDDIR_OK && gone(a_path), "release after reconnect: %s: %s", ST(s), err);
    s = builddir_keep(c, &b, &o, err, sizeof err);
    CHECK(s == BUILDDIR_OK && o.kept_path[0] == '/', "keep after reconnect: %s: %s", ST(s), err);
    s = builddir_reconnect(NULL, NULL, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT, "NULL conn: %s", ST(s));
    builddir_close(c);
    check_fds_back_to(&base);
    return 0;
}

/* Past the daemon's connection limit for this uid (one): busy. */
static int busy(const char *socket) {
    fdset base = open_fds();
    builddir_conn *first = connect_ok(socket);
    builddir_conn *second = NULL;
    builddir_status s = builddir_connect(socket, &second, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_BUSY && second == NULL, "second connection: %s: %s", ST(s), err);
    CHECK(strlen(err) > 0, "no message");
    builddir_close(first);
    check_fds_back_to(&base);
    return 0;
}

/* Bad arguments: the documented error, never a crash. */
static int args(const char *socket) {
    fdset base = open_fds();
    CHECK(strlen(builddir_version()) > 0, "empty version");
    for (int i = 0; i <= BUILDDIR_ERR_BAD_REQUEST; i++)
        CHECK(strcmp(ST((builddir_status)i), "unknown") != 0, "status %d has no name", i);
    CHECK(strcmp(ST((builddir_status)13), "unknown") == 0, "13: %s", ST((builddir_status)13));
    CHECK(strcmp(ST((builddir_status)-1), "unknown") == 0, "-1");
    CHECK(strcmp(ST(BUILDDIR_ERR_PERMISSION_DENIED), "permission-denied") == 0, "name");

    builddir_conn *c = NULL;
    builddir_status s = builddir_connect(socket, NULL, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT, "NULL out: %s", ST(s));
    s = builddir_connect("\xff\xfe/sock", &c, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT && c == NULL, "bad UTF-8 path: %s: %s", ST(s), err);
    s = builddir_connect("", &c, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT, "empty path: %s: %s", ST(s), err);
    char *longpath = malloc(300);
    memset(longpath, 'p', 299);
    longpath[0] = '/';
    longpath[299] = '\0';
    s = builddir_connect(longpath, &c, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT, "300-byte path: %s: %s", ST(s), err);
    free(longpath);
    char *huge = malloc(10000);
    memset(huge, 'h', 9999);
    huge[9999] = '\0';
    s = builddir_connect(huge, &c, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT, "10000-byte path: %s: %s", ST(s), err);

    c = connect_ok(socket);
    builddir_lease l;
    memset(&l, 0x55, sizeof l);
    s = builddir_allocate(NULL, "x", NULL, NULL, &l, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT && l.dir_fd == -1 && l.id[0] == '\0', "NULL conn: %s", ST(s));
    s = builddir_allocate(c, "x", NULL, NULL, NULL, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT, "NULL out: %s", ST(s));
    s = builddir_allocate(c, "bad\xc3\x28utf8", NULL, NULL, &l, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT, "bad UTF-8 name: %s: %s", ST(s), err);
    s = builddir_allocate(c, huge, NULL, NULL, &l, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT, "10000-byte name: %s: %s", ST(s), err);
    huge[300] = '\0';
    s = builddir_allocate(c, huge, NULL, NULL, &l, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_NAME, "300-byte name: %s: %s", ST(s), err);
    s = builddir_allocate(c, "line\nbreak", NULL, NULL, &l, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_NAME, "control char: %s: %s", ST(s), err);
    free(huge);
    /* err NULL, and a tiny err buffer: truncated, terminated. */
    s = builddir_allocate(c, "bad\xff", NULL, NULL, &l, NULL, 0);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT, "err NULL: %s", ST(s));
    char tiny[10];
    memset(tiny, 'q', sizeof tiny);
    s = builddir_allocate(c, "bad\xff", NULL, NULL, &l, tiny, 1);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT && tiny[0] == '\0' && tiny[1] == 'q', "errlen 1");
    s = builddir_allocate(c, "bad\xff", NULL, NULL, &l, tiny, sizeof tiny);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT && strlen(tiny) == sizeof tiny - 1, "errlen 10: %zu", strlen(tiny));
    /* A size limit where the daemon has no sized leases (lease_backend = "dir"). */
    builddir_limits lim = {1 << 20, 0};
    s = builddir_allocate(c, "limited", NULL, &lim, &l, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_BAD_REQUEST, "limit on dir backend: %s: %s", ST(s), err);
    if (getuid() != 0) {
        builddir_owner root = {0, 0};
        s = builddir_allocate(c, "for-root", &root, NULL, &l, err, sizeof err);
        CHECK(s == BUILDDIR_ERR_PERMISSION_DENIED, "owner without a grant: %s: %s", ST(s), err);
    }

    /* Leases that are not leases. */
    s = builddir_release(c, NULL, NULL, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT, "NULL lease: %s", ST(s));
    builddir_lease fake;
    memset(&fake, 'x', sizeof fake);
    fake.dir_fd = 1; /* stdout: must not be closed */
    builddir_outcome o;
    s = builddir_release(c, &fake, &o, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT && fake.dir_fd == -1, "unterminated id: %s: %s", ST(s), err);
    CHECK(fcntl(1, F_GETFD) >= 0, "stdout was closed");
    memset(&fake, 0, sizeof fake);
    strcpy(fake.id, "0123456789abcdef");
    fake.dir_fd = 2;
    s = builddir_keep(c, &fake, &o, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT && fake.dir_fd == -1, "unknown id: %s: %s", ST(s), err);
    CHECK(fcntl(2, F_GETFD) >= 0, "stderr was closed");
    strcpy(fake.id, "\xff\xfe");
    s = builddir_release(c, &fake, &o, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT, "bad UTF-8 id: %s: %s", ST(s), err);

    /* A real lease, ended with a NULL connection: refused, and still held
       (builddir_close releases it). */
    allocate_ok(c, "capi-args", NULL, NULL, &l);
    char held[BUILDDIR_PATH_MAX];
    strcpy(held, l.path);
    s = builddir_keep(NULL, &l, &o, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT && l.dir_fd == -1, "NULL conn keep: %s", ST(s));
    CHECK(access(held, F_OK) == 0, "lease ended by a refused call");

    s = builddir_set_timeout(NULL, 100, err, sizeof err);
    CHECK(s == BUILDDIR_ERR_INVALID_ARGUMENT, "set_timeout NULL: %s", ST(s));
    s = builddir_set_timeout(c, 5000, err, sizeof err);
    CHECK(s == BUILDDIR_OK, "set_timeout: %s: %s", ST(s), err);
    builddir_close(NULL);
    builddir_close(c);
    CHECK(eventually_gone(held), "%s survived builddir_close", held);
    check_fds_back_to(&base);
    return 0;
}

/* fork(): an exec'd child has none of the library's descriptors; a child
   that uses the connection is refused; the parent carries on. */
static int forking(const char *socket, const char *lister) {
    fdset base = open_fds();
    builddir_conn *c = connect_ok(socket);
    builddir_lease a;
    allocate_ok(c, "capi-fork", NULL, NULL, &a);
    /* What the library holds: every descriptor opened since `base`. */
    fdset lib = open_fds();
    char targets[16][PATH_MAX];
    int nt = 0;
    for (int i = 0; i < lib.n && nt < 16; i++)
        if (!has(&base, lib.fd[i])) fd_target(lib.fd[i], targets[nt++], PATH_MAX);
    CHECK(nt == 2, "library holds %d fds, expected the socket and the dir", nt);

    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe2: %s", strerror(errno));
    pid_t pid = fork();
    if (pid == 0) {
        builddir_lease l;
        builddir_status s = builddir_allocate(c, "child", NULL, NULL, &l, err, sizeof err);
        if (s != BUILDDIR_ERR_INVALID_ARGUMENT) _exit(3);
        dup2(p[1], 1);
        execl(lister, lister, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    char out[65536];
    size_t got = 0;
    ssize_t n;
    while ((n = read(p[0], out + got, sizeof out - 1 - got)) > 0) got += (size_t)n;
    out[got] = '\0';
    close(p[0]);
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d (3: its use of the connection was not refused)", st);
    CHECK(got > 0, "lister printed nothing");
    for (int i = 0; i < nt; i++)
        CHECK(strstr(out, targets[i]) == NULL, "exec'd child holds %s:\n%s", targets[i], out);
    printf("child's fds:\n%s", out);

    /* A child that closes its copy of the connection changes nothing for
       the parent. */
    pid = fork();
    if (pid == 0) {
        builddir_close(c);
        _exit(0);
    }
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "closing child: %d", st);
    CHECK(access(a.path, F_OK) == 0, "lease gone after the child closed its copy");
    builddir_lease b;
    allocate_ok(c, "capi-fork-after", NULL, NULL, &b);
    builddir_status s = builddir_release(c, &a, NULL, err, sizeof err);
    CHECK(s == BUILDDIR_OK, "release a: %s: %s", ST(s), err);
    s = builddir_release(c, &b, NULL, err, sizeof err);
    CHECK(s == BUILDDIR_OK, "release b: %s: %s", ST(s), err);
    builddir_close(c);
    check_fds_back_to(&base);
    return 0;
}

static void pidns_init(const char *socket);

/* A forked child in a new PID namespace can have its parent's PID (both
   PID 1 of theirs); its use of the connection is refused all the same.
   Root only (unshare(CLONE_NEWPID)). */
static int pidns(const char *socket) {
    /* Only forked helpers unshare (and leave by _exit): LeakSanitizer's
       exit-time check cannot run in a process that unshared. */
    pid_t helper = fork();
    CHECK(helper >= 0, "fork: %s", strerror(errno));
    if (helper == 0) {
        if (unshare(CLONE_NEWPID) != 0) {
            printf("FAIL: unshare(CLONE_NEWPID): %s (run as root)\n", strerror(errno));
            fflush(stdout);
            _exit(1);
        }
        pid_t init = fork();
        if (init < 0) _exit(1);
        if (init != 0) {
            int st;
            waitpid(init, &st, 0);
            _exit(WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1);
        }
        /* PID 1 of a new namespace from here on. */
        pidns_init(socket);
    }
    int st;
    waitpid(helper, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "PID 1 of the new namespace: status %d", st);
    return 0;
}

static void pidns_init(const char *socket) {
    CHECK(getpid() == 1, "pid %d in the new namespace", (int)getpid());
    builddir_conn *c = connect_ok(socket);
    builddir_lease a;
    allocate_ok(c, "capi-pidns", NULL, NULL, &a);
    CHECK(unshare(CLONE_NEWPID) == 0, "unshare(CLONE_NEWPID): %s", strerror(errno));
    pid_t pid = fork();
    if (pid == 0) {
        if (getpid() != 1) _exit(4);
        builddir_status s = builddir_release(c, &a, NULL, err, sizeof err);
        _exit(s == BUILDDIR_ERR_INVALID_ARGUMENT ? 0 : 3);
    }
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "child status %d (3: a child with its parent's PID used the connection; 4: child not PID 1)", st);
    CHECK(access(a.path, F_OK) == 0, "lease gone after the child's attempt");
    builddir_status s = builddir_release(c, &a, NULL, err, sizeof err);
    CHECK(s == BUILDDIR_OK, "release: %s: %s", ST(s), err);
    builddir_close(c);
    fflush(stdout);
    _exit(0);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3) {
        fprintf(stderr, "usage: capi_test SCENARIO SOCKET [ARGS...]\n");
        return 2;
    }
    const char *what = argv[1], *socket = argv[2];
    int rc = 2;
    if (!strcmp(what, "basic")) rc = basic(socket);
    else if (!strcmp(what, "owner") && argc == 5) rc = owner(socket, (unsigned)atoi(argv[3]), (unsigned)atoi(argv[4]));
    else if (!strcmp(what, "keep_for") && argc == 8)
        rc = keep_for(socket, (unsigned)atoi(argv[3]), (unsigned)atoi(argv[4]), (unsigned)atoi(argv[5]),
                      (unsigned)atoi(argv[6]), !strcmp(argv[7], "ok"));
    else if (!strcmp(what, "limit") && argc == 4) rc = limit(socket, strtoull(argv[3], NULL, 10));
    else if (!strcmp(what, "down")) rc = down(socket);
    else if (!strcmp(what, "refused")) rc = refused(socket);
    else if (!strcmp(what, "busy")) rc = busy(socket);
    else if (!strcmp(what, "reconnect")) rc = reconnect(socket);
    else if (!strcmp(what, "args")) rc = args(socket);
    else if (!strcmp(what, "fork") && argc == 4) rc = forking(socket, argv[3]);
    else if (!strcmp(what, "pidns")) rc = pidns(socket);
    else fprintf(stderr, "capi_test: unknown scenario %s\n", what);
    if (rc == 0) printf("PASS %s\n", what);
    return rc;
}
