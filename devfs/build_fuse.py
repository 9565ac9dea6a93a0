"""cffi (API mode, out of line) build of ``devfs._fuse``: libfuse3's low-level API.

Compiled against the installed libfuse3 headers (``pkg-config fuse3``) with
``FUSE_USE_VERSION 35`` (the ioctl op takes an ``unsigned int cmd``).

cdef notes (reference fuse-notes §11):
- cffi's cdef does not know ``uid_t`` & co.: they are declared as
  ``typedef int... T;`` and the compiler sizes them;
- ``struct fuse_file_info`` has bitfields, which cffi refuses to mix with
  ``...;``: it is declared in full, exactly as fuse_common.h 3.14 has it;
- ``struct stat``, ``struct statvfs``, ``struct fuse_buf`` and
  ``struct fuse_conn_info`` are partial (``...;``): only the fields used.

Besides the library, the module holds a little C: :c:func:`iofs_session_loop`,
the receive/process loop of one session, run on its own thread with the GIL
released, so that a request costs no Python loop iteration and no trio
wake-up (fuse-notes §11: a trio wake-up per request costs ~20 µs, three
times the request); :c:func:`iofs_wake_signal`, how that loop is stopped;
and the ioctl op, which replies in C to what Python returns.
"""
import os
import shlex
import subprocess
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

CDEF = r"""
typedef int... uid_t;
typedef int... gid_t;
typedef int... pid_t;
typedef int... mode_t;
typedef int... off_t;
typedef int... dev_t;
typedef int... ino_t;
typedef int... nlink_t;
typedef int... time_t;
typedef int... blksize_t;
typedef int... blkcnt_t;
typedef int... fsblkcnt_t;
typedef int... fsfilcnt_t;
typedef uint64_t fuse_ino_t;
typedef struct fuse_req *fuse_req_t;
struct fuse_session;
struct fuse_pollhandle;
struct fuse_bufvec;
struct fuse_forget_data;
struct flock;

struct timespec { time_t tv_sec; long tv_nsec; ...; };

struct stat {
    dev_t st_dev;
    ino_t st_ino;
    mode_t st_mode;
    nlink_t st_nlink;
    uid_t st_uid;
    gid_t st_gid;
    off_t st_size;
    blksize_t st_blksize;
    blkcnt_t st_blocks;
    struct timespec st_atim;
    struct timespec st_mtim;
    struct timespec st_ctim;
    ...;
};

struct statvfs {
    unsigned long f_bsize;
    unsigned long f_frsize;
    fsblkcnt_t f_blocks;
    fsblkcnt_t f_bfree;
    fsblkcnt_t f_bavail;
    fsfilcnt_t f_files;
    fsfilcnt_t f_ffree;
    fsfilcnt_t f_favail;
    unsigned long f_namemax;
    ...;
};

struct fuse_args {
    int argc;
    char **argv;
    int allocated;
};

struct fuse_file_info {
    int flags;
    unsigned int writepage : 1;
    unsigned int direct_io : 1;
    unsigned int keep_cache : 1;
    unsigned int flush : 1;
    unsigned int nonseekable : 1;
    unsigned int flock_release : 1;
    unsigned int cache_readdir : 1;
    unsigned int noflush : 1;
    unsigned int padding : 24;
    unsigned int padding2 : 32;
    uint64_t fh;
    uint64_t lock_owner;
    uint32_t poll_events;
};

struct fuse_conn_info {
    unsigned proto_major;
    unsigned proto_minor;
    unsigned max_write;
    unsigned max_read;
    unsigned max_readahead;
    unsigned capable;
    unsigned want;
    unsigned max_background;
    unsigned congestion_threshold;
    unsigned time_gran;
    ...;
};

struct fuse_entry_param {
    fuse_ino_t ino;
    uint64_t generation;
    struct stat attr;
    double attr_timeout;
    double entry_timeout;
};

struct fuse_ctx {
    uid_t uid;
    gid_t gid;
    pid_t pid;
    mode_t umask;
};

struct fuse_lowlevel_ops {
    void (*init) (void *userdata, struct fuse_conn_info *conn);
    void (*destroy) (void *userdata);
    void (*lookup) (fuse_req_t req, fuse_ino_t parent, const char *name);
    void (*forget) (fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
    void (*getattr) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
    void (*open) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
    void (*read) (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                  struct fuse_file_info *fi);
    void (*write) (fuse_req_t req, fuse_ino_t ino, const char *buf,
                   size_t size, off_t off, struct fuse_file_info *fi);
    void (*flush) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
    void (*release) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
    void (*opendir) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
    void (*readdir) (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                     struct fuse_file_info *fi);
    void (*releasedir) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
    void (*statfs) (fuse_req_t req, fuse_ino_t ino);
    void (*ioctl) (fuse_req_t req, fuse_ino_t ino, unsigned int cmd,
                   void *arg, struct fuse_file_info *fi, unsigned flags,
                   const void *in_buf, size_t in_bufsz, size_t out_bufsz);
    void (*poll) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
                  struct fuse_pollhandle *ph);
    ...;
};

typedef void (*fuse_interrupt_func_t)(fuse_req_t req, void *data);

#define FUSE_ROOT_ID 1
#define FUSE_IOCTL_COMPAT ...
#define FUSE_IOCTL_UNRESTRICTED ...
#define FUSE_IOCTL_DIR ...
#define FUSE_CAP_IOCTL_DIR ...
#define S_IFDIR ...
#define S_IFREG ...

struct fuse_session *fuse_session_new(struct fuse_args *args,
                                      const struct fuse_lowlevel_ops *op,
                                      size_t op_size, void *userdata);
int fuse_session_mount(struct fuse_session *se, const char *mountpoint);
void fuse_session_unmount(struct fuse_session *se);
void fuse_session_destroy(struct fuse_session *se);
void fuse_session_exit(struct fuse_session *se);
int fuse_session_exited(struct fuse_session *se);
int fuse_session_fd(struct fuse_session *se);

int fuse_reply_err(fuse_req_t req, int err);
void fuse_reply_none(fuse_req_t req);
int fuse_reply_entry(fuse_req_t req, const struct fuse_entry_param *e);
int fuse_reply_attr(fuse_req_t req, const struct stat *attr, double attr_timeout);
int fuse_reply_open(fuse_req_t req, const struct fuse_file_info *fi);
int fuse_reply_write(fuse_req_t req, size_t count);
int fuse_reply_buf(fuse_req_t req, const char *buf, size_t size);
int fuse_reply_statfs(fuse_req_t req, const struct statvfs *stbuf);
int fuse_reply_ioctl(fuse_req_t req, int result, const void *buf, size_t size);
int fuse_reply_poll(fuse_req_t req, unsigned revents);
size_t fuse_add_direntry(fuse_req_t req, char *buf, size_t bufsize,
                         const char *name, const struct stat *stbuf, off_t off);
int fuse_lowlevel_notify_poll(struct fuse_pollhandle *ph);
void fuse_pollhandle_destroy(struct fuse_pollhandle *ph);

void *fuse_req_userdata(fuse_req_t req);
const struct fuse_ctx *fuse_req_ctx(fuse_req_t req);
void fuse_req_interrupt_func(fuse_req_t req, fuse_interrupt_func_t func, void *data);
int fuse_req_interrupted(fuse_req_t req);

int iofs_session_loop(struct fuse_session *se);
int iofs_wake_signal(void);

extern "Python" void iofs_init(void *userdata, struct fuse_conn_info *conn);
extern "Python" void iofs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
extern "Python" void iofs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
extern "Python" void iofs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
extern "Python" void iofs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
extern "Python" void iofs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                               struct fuse_file_info *fi);
extern "Python" void iofs_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
                                size_t size, off_t off, struct fuse_file_info *fi);
extern "Python" void iofs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
extern "Python" void iofs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
extern "Python" void iofs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
extern "Python" void iofs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                                  struct fuse_file_info *fi);
extern "Python" void iofs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
extern "Python" void iofs_statfs(fuse_req_t req, fuse_ino_t ino);
#define IOFS_DEFERRED ...
extern "Python+C" int iofs_ioctl(fuse_req_t req, uint64_t fh, unsigned int cmd,
                                 uintptr_t arg, unsigned flags);
void iofs_ioctl_op(fuse_req_t req, fuse_ino_t ino, unsigned int cmd,
                   void *arg, struct fuse_file_info *fi, unsigned flags,
                   const void *in_buf, size_t in_bufsz, size_t out_bufsz);
extern "Python" void iofs_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
                               struct fuse_pollhandle *ph);
extern "Python" void iofs_interrupt(fuse_req_t req, void *data);
"""

SOURCE = r"""
#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#define IOFS_WAKE_OFFSET 6   /* SIGRTMIN+6: glibc keeps the ones below SIGRTMIN */

/* The ioctl op: Python gets plain integers and returns the answer, and C
 * replies. Every pointer or struct argument of an extern "Python" callback
 * costs a cdata object, and every libfuse call from Python a GIL release and
 * retake; the null ioctl is the benchmark of the whole transport.
 * iofs_ioctl returns the ioctl result (>= 0), -errno, or IOFS_DEFERRED (the
 * reply will come from trio). */
#define IOFS_DEFERRED (-0x7fffffff - 1)
int iofs_ioctl(fuse_req_t req, uint64_t fh, unsigned int cmd, uintptr_t arg, unsigned flags);

void iofs_ioctl_op(fuse_req_t req, fuse_ino_t ino, unsigned int cmd,
                   void *arg, struct fuse_file_info *fi, unsigned flags,
                   const void *in_buf, size_t in_bufsz, size_t out_bufsz)
{
    int r;
    (void)ino; (void)in_buf; (void)in_bufsz; (void)out_bufsz;
    r = iofs_ioctl(req, fi->fh, cmd, (uintptr_t)arg, flags);
    if (r == IOFS_DEFERRED)
        return;
    if (r >= 0)
        fuse_reply_ioctl(req, r, NULL, 0);
    else
        fuse_reply_err(req, -r);
}

/* The loop of one session, run on its own thread with the GIL released:
 * receive one request (blocking in read() of /dev/fuse) and process it (the
 * ops run their Python callbacks, taking the GIL only for that). Returns 0
 * when the session ended (exit flag, unmount) or -errno on a device error.
 *
 * To stop it: fuse_session_exit(), then send iofs_wake_signal() to the
 * thread (pthread_kill) until it returns: the blocked read() fails with
 * EINTR and the loop sees the exit flag. A signal rather than poll() on an
 * extra eventfd: poll before every read measured about 1.5 us of CPU per
 * request, a sixth of the whole request. */
int iofs_session_loop(struct fuse_session *se)
{
    struct fuse_buf fbuf = { .mem = NULL };
    sigset_t wake;
    int res = 0;

    sigemptyset(&wake);
    sigaddset(&wake, SIGRTMIN + IOFS_WAKE_OFFSET);
    pthread_sigmask(SIG_UNBLOCK, &wake, NULL);
    while (!fuse_session_exited(se)) {
        res = fuse_session_receive_buf(se, &fbuf);
        if (res == -EINTR || res == -EAGAIN)
            continue;
        if (res <= 0)
            break;   /* 0: unmounted or aborted (ENODEV), libfuse set exited */
        fuse_session_process_buf(se, &fbuf);
    }
    free(fbuf.mem);
    return res < 0 ? res : 0;
}

static void iofs_wake_handler(int sig)
{
    (void)sig;   /* only there to make the blocked read() return EINTR */
}

/* The signal that wakes a loop thread: a real-time signal no one else in the
 * process uses, with a do-nothing handler installed (once, without
 * SA_RESTART). Returns the signal number or -errno. */
int iofs_wake_signal(void)
{
    static int installed;
    int sig = SIGRTMIN + IOFS_WAKE_OFFSET;
    if (!installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = iofs_wake_handler;
        sigemptyset(&sa.sa_mask);
        if (sigaction(sig, &sa, NULL) < 0)
            return -errno;
        installed = 1;
    }
    return sig;
}
"""


def _pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args, "fuse3"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(out)


def _flags():
    cflags = _pkg_config("--cflags")
    libs = _pkg_config("--libs")
    if cflags is None or libs is None:
        # Debian's layout, for a machine without pkg-config.
        cflags, libs = ["-I/usr/include/fuse3"], ["-lfuse3", "-lpthread"]
    include_dirs = [f[2:] for f in cflags if f.startswith("-I")]
    libraries = [f[2:] for f in libs if f.startswith("-l")]
    library_dirs = [f[2:] for f in libs if f.startswith("-L")]
    other = [f for f in cflags if not f.startswith("-I")]
    return include_dirs, libraries, library_dirs, other


def make_ffibuilder(cflags=("-O2",), ldflags=()):
    """The cffi builder of ``devfs._fuse`` with extra compiler and linker flags."""
    ffi = FFI()
    ffi.cdef(CDEF)
    inc, libs, libdirs, other = _flags()
    ffi.set_source(
        "devfs._fuse",
        SOURCE,
        include_dirs=inc,
        libraries=libs,
        library_dirs=libdirs,
        extra_compile_args=["-std=gnu11", "-Wall", *cflags, *other],
        extra_link_args=list(ldflags),
    )
    return ffi


ffibuilder = make_ffibuilder()


def build_in_place(builder=None, dest_dir=HERE):
    """Compile ``devfs._fuse`` next to this file (development builds), or
    ``builder``'s module into ``dest_dir``.

    Compiled in a scratch directory, not the repository root: setuptools
    would parse the project's pyproject.toml there, and an older setuptools
    than the project asks for refuses it. Returns the path of the module.
    """
    import glob
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="iommufs-build-") as tmp:
        (builder or ffibuilder).compile(tmpdir=tmp, verbose=False)
        built = glob.glob(os.path.join(tmp, "devfs", "_fuse*.so"))
        if len(built) != 1:
            raise RuntimeError(f"expected one built module, found {built}")
        os.makedirs(dest_dir, exist_ok=True)
        dest = os.path.join(dest_dir, os.path.basename(built[0]))
        shutil.copy2(built[0], dest + ".tmp")
        os.replace(dest + ".tmp", dest)    # atomic: a running server keeps its mapping
        return dest


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sanitize"]:
        # The ASan+UBSan variant, into OUTDIR/devfs/ (cext/sanitize.py).
        sys.path.insert(0, os.path.join(os.path.dirname(HERE), "cext"))
        import sanitize

        print(build_in_place(make_ffibuilder(sanitize.CFLAGS, sanitize.LDFLAGS),
                             os.path.join(os.path.abspath(sys.argv[2]), "devfs")))
    else:
        print(build_in_place())
