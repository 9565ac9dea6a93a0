/* libiommufs-preload.so: what a bind mount cannot do for unmodified programs.
 *
 * LD_PRELOAD'ed into a program (by `iommufs run`, or by hand with
 * IOMMUFS_ROOT naming a mount), it makes the nodes of an iommufs mount
 * behave like the kernel's /dev/iommu and /dev/vfio/devices/vfioN (docs/shim.md,
 * "The preload shim"):
 *
 *   - ioctls that return an fd (IOMMU_FAULT_QUEUE_ALLOC out_fault_fd,
 *     IOMMU_VEVENTQ_ALLOC out_veventq_fd, IOMMU_TEST_CMD CREATE_ACCESS
 *     out_access_fd): after the server's success, IOMMUFS_FD_PATH tells the
 *     node under fds/; the shim opens it and writes the fd number into the
 *     struct (docs/nodes.md, "Ioctls that return file descriptors");
 *   - close() of the last reference to an iommufd or VFIO device open file,
 *     or to a fault or access fd the shim handed out, sends
 *     IOMMUFS_SYNC_CLOSE first, so the teardown is finished when close()
 *     returns (FUSE releases asynchronously): a program that closes a fault
 *     fd and destroys the FAULT object, or closes an access fd and checks
 *     pin counts, gets the kernel's answer. The shim tracks the open files
 *     it saw opened or handed out and every dup of them; an open file that
 *     may be referenced outside this process (fork, vfork, posix_spawn,
 *     system, popen, SCM_RIGHTS, or an fd the shim never saw opened) is
 *     "shared" and gets a plain close;
 *   - the stat family reports S_IFCHR and fixed device numbers for the
 *     iommu node (10:123, misc) and vfioN nodes (511:N, "vfio-dev");
 *   - with IOMMUFS_REDIRECT unset or not "0", opens (and stats, access) of
 *     /dev/iommu and /dev/vfio/devices/vfioN go to the mount's nodes.
 *
 * Recognising our files costs no FUSE round trip: statx(AT_STATX_DONT_SYNC)
 * gives an fd's st_dev (fuse-notes §5), compared with the mount's, which is
 * confirmed once per process from /proc/self/mountinfo (fstype
 * fuse.iommufs). Inode numbers tell the nodes apart; they never change while
 * mounted and are learnt once per process (the mount's iommu node and a
 * readdir of vfio/devices), on the first file seen on the mount.
 *
 * Everything else goes straight to the next definition (dlsym RTLD_NEXT).
 * Hooks that POSIX calls async-signal-safe stay so: raw syscalls, atomics,
 * and one spin lock taken with every signal blocked. Silent unless
 * IOMMUFS_DEBUG is set (then one line per decision on stderr).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <unistd.h>

#include "preload_uapi.h"

#define EXPORT __attribute__((visibility("default")))
#define HIDDEN __attribute__((visibility("hidden")))

/* Device numbers reported for the nodes (docs/nodes.md). The kernel gives
 * /dev/iommu a dynamic misc minor and vfio-dev a dynamic major: these are
 * fixed, plausible values. */
#define IOMMU_MAJOR 10
#define IOMMU_MINOR 123
#define VFIO_DEV_MAJOR 511

/* What a file of the mount is. classify() tells K_IOMMU, K_VFIO and
 * K_OTHER apart by inode; a node under fds/ is K_OTHER there, and the
 * tracked open files the shim handed out remember what they are: K_FAULT
 * (IOMMU_FAULT_QUEUE_ALLOC) or K_ACCESS (IOMMU_TEST_CMD CREATE_ACCESS). */
enum kind { K_NONE = 0, K_IOMMU, K_VFIO, K_OTHER, K_FAULT, K_ACCESS };

/* ---------------------------------------------------------------- real libc */

#define REAL(name) real_##name
#define DECL(ret, name, args) static ret(*real_##name) args

DECL(int, open, (const char *, int, ...));
DECL(int, open64, (const char *, int, ...));
DECL(int, openat, (int, const char *, int, ...));
DECL(int, openat64, (int, const char *, int, ...));
DECL(int, __open_2, (const char *, int));
DECL(int, __open64_2, (const char *, int));
DECL(int, __openat_2, (int, const char *, int));
DECL(int, __openat64_2, (int, const char *, int));
DECL(FILE *, fopen, (const char *, const char *));
DECL(FILE *, fopen64, (const char *, const char *));
DECL(int, close, (int));
DECL(int, close_range, (unsigned int, unsigned int, int));
DECL(void, closefrom, (int));
DECL(int, dup, (int));
DECL(int, dup2, (int, int));
DECL(int, dup3, (int, int, int));
DECL(int, fcntl, (int, int, ...));
DECL(int, fcntl64, (int, int, ...));
DECL(int, ioctl, (int, unsigned long, ...));
DECL(int, stat, (const char *, struct stat *));
DECL(int, stat64, (const char *, struct stat64 *));
DECL(int, lstat, (const char *, struct stat *));
DECL(int, lstat64, (const char *, struct stat64 *));
DECL(int, fstat, (int, struct stat *));
DECL(int, fstat64, (int, struct stat64 *));
DECL(int, fstatat, (int, const char *, struct stat *, int));
DECL(int, fstatat64, (int, const char *, struct stat64 *, int));
DECL(int, statx, (int, const char *, int, unsigned int, struct statx *));
DECL(int, __xstat, (int, const char *, struct stat *));
DECL(int, __xstat64, (int, const char *, struct stat64 *));
DECL(int, __lxstat, (int, const char *, struct stat *));
DECL(int, __lxstat64, (int, const char *, struct stat64 *));
DECL(int, __fxstat, (int, int, struct stat *));
DECL(int, __fxstat64, (int, int, struct stat64 *));
DECL(int, __fxstatat, (int, int, const char *, struct stat *, int));
DECL(int, __fxstatat64, (int, int, const char *, struct stat64 *, int));
DECL(int, access, (const char *, int));
DECL(int, faccessat, (int, const char *, int, int));
DECL(int, posix_spawn, (pid_t *, const char *, const posix_spawn_file_actions_t *,
                        const posix_spawnattr_t *, char *const[], char *const[]));
DECL(int, posix_spawnp, (pid_t *, const char *, const posix_spawn_file_actions_t *,
                         const posix_spawnattr_t *, char *const[], char *const[]));
DECL(int, posix_spawn_file_actions_adddup2, (posix_spawn_file_actions_t *, int, int));
DECL(int, system, (const char *));
DECL(FILE *, popen, (const char *, const char *));
DECL(ssize_t, sendmsg, (int, const struct msghdr *, int));
DECL(pid_t, _Fork, (void));

/* The vfork trampoline jumps here (x86-64 only, see below). */
HIDDEN void *iofs_real_vfork;

/* Compat symbols (the __xstat family) have no default version in newer
 * glibcs: ask for the old version by name when plain dlsym finds none. */
static void *next_sym(const char *name)
{
    void *p = dlsym(RTLD_NEXT, name);
    if (!p)
        p = dlvsym(RTLD_NEXT, name, "GLIBC_2.2.5");
    if (!p)
        p = dlvsym(RTLD_NEXT, name, "GLIBC_2.4");
    if (!p)
        p = dlvsym(RTLD_NEXT, name, "GLIBC_2.17");
    return p;
}

#define RESOLVE(name) __atomic_store_n(&real_##name, (__typeof__(real_##name))next_sym(#name), __ATOMIC_RELEASE)

static void resolve_all(void)
{
    RESOLVE(open); RESOLVE(open64); RESOLVE(openat); RESOLVE(openat64);
    RESOLVE(__open_2); RESOLVE(__open64_2); RESOLVE(__openat_2); RESOLVE(__openat64_2);
    RESOLVE(fopen); RESOLVE(fopen64);
    RESOLVE(close); RESOLVE(close_range); RESOLVE(closefrom);
    RESOLVE(dup); RESOLVE(dup2); RESOLVE(dup3); RESOLVE(fcntl); RESOLVE(fcntl64);
    RESOLVE(ioctl);
    RESOLVE(stat); RESOLVE(stat64); RESOLVE(lstat); RESOLVE(lstat64);
    RESOLVE(fstat); RESOLVE(fstat64); RESOLVE(fstatat); RESOLVE(fstatat64); RESOLVE(statx);
    RESOLVE(__xstat); RESOLVE(__xstat64); RESOLVE(__lxstat); RESOLVE(__lxstat64);
    RESOLVE(__fxstat); RESOLVE(__fxstat64); RESOLVE(__fxstatat); RESOLVE(__fxstatat64);
    RESOLVE(access); RESOLVE(faccessat);
    RESOLVE(posix_spawn); RESOLVE(posix_spawnp); RESOLVE(posix_spawn_file_actions_adddup2);
    RESOLVE(system); RESOLVE(popen); RESOLVE(sendmsg); RESOLVE(_Fork);
    __atomic_store_n(&iofs_real_vfork, next_sym("vfork"), __ATOMIC_RELEASE);
}

/* ------------------------------------------------------------------ settings */

#define ROOT_MAX 1024            /* longer IOMMUFS_ROOT: the shim stays inert */
#define PATH_BUF (ROOT_MAX + 64) /* a node path under the root */

static char g_root[ROOT_MAX];    /* canonical mount root; "" = inert */
static size_t g_root_len;
static int g_redirect = 1;
static int g_debug;
static atomic_int g_inited;

/* ------------------------------------------------------------ debug output */

/* A tiny async-signal-safe formatter: %d %u %x %s %c. */
static void dbg(const char *fmt, ...)
{
    if (!g_debug)
        return;
    char out[512];
    size_t n = 0;
    const char *pre = "iommufs-preload[";
    while (*pre && n < sizeof(out) - 1)
        out[n++] = *pre++;
    char num[24];
    int len = 0;
    long pid = syscall(SYS_getpid);
    do { num[len++] = (char)('0' + pid % 10); pid /= 10; } while (pid);
    while (len && n < sizeof(out) - 1)
        out[n++] = num[--len];
    if (n < sizeof(out) - 3) { out[n++] = ']'; out[n++] = ':'; out[n++] = ' '; }
    va_list ap;
    va_start(ap, fmt);
    for (const char *f = fmt; *f && n < sizeof(out) - 2; f++) {
        if (*f != '%') { out[n++] = *f; continue; }
        f++;
        if (*f == 's') {
            const char *s = va_arg(ap, const char *);
            if (!s) s = "(null)";
            while (*s && n < sizeof(out) - 2) out[n++] = *s++;
        } else if (*f == 'c') {
            out[n++] = (char)va_arg(ap, int);
        } else if (*f == 'd' || *f == 'u' || *f == 'x') {
            unsigned long v;
            int neg = 0, base = *f == 'x' ? 16 : 10;
            if (*f == 'd') {
                long s = va_arg(ap, int);
                neg = s < 0;
                v = neg ? (unsigned long)-s : (unsigned long)s;
            } else {
                v = va_arg(ap, unsigned int);
            }
            len = 0;
            do { num[len++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
            if (neg) num[len++] = '-';
            while (len && n < sizeof(out) - 2) out[n++] = num[--len];
        } else if (*f) {
            out[n++] = *f;
        } else {
            break;
        }
    }
    va_end(ap);
    out[n++] = '\n';
    int saved = errno;
    syscall(SYS_write, 2, out, n);
    errno = saved;
}

/* ------------------------------------------------- the lock (signals blocked) */

static atomic_flag g_lock = ATOMIC_FLAG_INIT;

static void lock(sigset_t *old)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, old);
    while (atomic_flag_test_and_set_explicit(&g_lock, memory_order_acquire))
        sched_yield();
}

static void unlock(const sigset_t *old)
{
    atomic_flag_clear_explicit(&g_lock, memory_order_release);
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

/* ------------------------------------------------------- the mount and nodes */

enum { M_UNKNOWN = 0, M_HINT, M_READY, M_ABSENT };
static atomic_int g_mstate;
static dev_t g_dev;                       /* hint, then confirmed */
static ino_t g_iommu_ino;
#define MAX_VFIO 1024
static struct { ino_t ino; unsigned int n; } g_vfio[MAX_VFIO];
static int g_nvfio;

static int sys_statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *sx)
{
    return (int)syscall(SYS_statx, dirfd, path, flags, mask, sx);
}

static int sys_open(const char *path, int flags)
{
    return (int)syscall(SYS_openat, AT_FDCWD, path, flags, 0);
}

/* Unescape a mountinfo path field (\ooo octal escapes) in place. */
static void unescape(char *s)
{
    char *d = s;
    for (; *s; s++) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] >= '0' && s[2] <= '7'
            && s[3] >= '0' && s[3] <= '7') {
            *d++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
            s += 3;
        } else {
            *d++ = *s;
        }
    }
    *d = 0;
}

/* One /proc/self/mountinfo line: set *dev if it mounts fuse.iommufs at g_root. */
static void mountinfo_line(char *line, dev_t *dev, int *found)
{
    char *field[6];
    int nf = 0;
    char *p = line;
    while (nf < 6 && *p) {
        field[nf++] = p;
        while (*p && *p != ' ') p++;
        if (*p) *p++ = 0;
    }
    if (nf < 6)
        return;
    /* optional fields (none or more) end with a lone "-" */
    char *sep = strncmp(p, "- ", 2) == 0 ? p : strstr(p, " - ");
    if (!sep)
        return;
    if (sep != p)
        sep++;
    char *fstype = sep + 2, *end = strchr(fstype, ' ');
    if (end) *end = 0;
    if (strcmp(fstype, "fuse.iommufs") != 0)
        return;
    unescape(field[4]);
    if (strcmp(field[4], g_root) != 0)
        return;
    unsigned int ma = 0, mi = 0;
    char *q = field[2];
    while (*q >= '0' && *q <= '9') ma = ma * 10 + (unsigned)(*q++ - '0');
    if (*q++ != ':')
        return;
    while (*q >= '0' && *q <= '9') mi = mi * 10 + (unsigned)(*q++ - '0');
    *dev = makedev(ma, mi);         /* the last line wins: the topmost mount */
    *found = 1;
}

/* The st_dev of the iommufs mounted at g_root, from mountinfo (no FUSE
 * request). Called with the lock held: static buffers. */
static int mount_dev(dev_t *dev)
{
    static char buf[4096], line[8192];
    int fd = sys_open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    size_t ll = 0;
    int skip = 0, found = 0;
    for (;;) {
        ssize_t r = syscall(SYS_read, fd, buf, sizeof(buf));
        if (r <= 0)
            break;
        for (ssize_t i = 0; i < r; i++) {
            char c = buf[i];
            if (c == '\n') {
                if (!skip) { line[ll] = 0; mountinfo_line(line, dev, &found); }
                ll = 0;
                skip = 0;
            } else if (ll < sizeof(line) - 1) {
                line[ll++] = c;
            } else {
                skip = 1;             /* longer than any line of ours */
            }
        }
    }
    syscall(SYS_close, fd);
    return found;
}

/* Learn the inode numbers of the iommu node and of vfio/devices/vfioN.
 * Lock held. Returns 0 if the mount does not look like iommufs. */
static int learn_nodes(void)
{
    char path[PATH_BUF];
    struct statx sx;
    memcpy(path, g_root, g_root_len);
    strcpy(path + g_root_len, "/iommu");
    if (sys_statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_INO, &sx) != 0)
        return 0;
    g_iommu_ino = sx.stx_ino;
    strcpy(path + g_root_len, "/vfio/devices");
    int dfd = sys_open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return 1;                     /* no VFIO nodes: the iommu node still counts */
    static char dents[4096];
    g_nvfio = 0;
    for (;;) {
        long r = syscall(SYS_getdents64, dfd, dents, sizeof(dents));
        if (r <= 0)
            break;
        for (long off = 0; off < r;) {
            struct { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; } *d =
                (void *)(dents + off);
            off += d->reclen;
            if (strncmp(d->name, "vfio", 4) != 0 || !d->name[4])
                continue;
            unsigned int n = 0;
            const char *q = d->name + 4;
            while (*q >= '0' && *q <= '9') n = n * 10 + (unsigned)(*q++ - '0');
            if (*q || g_nvfio == MAX_VFIO)
                continue;
            if (sys_statx(dfd, d->name, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_INO, &sx) != 0)
                continue;
            g_vfio[g_nvfio].ino = sx.stx_ino;
            g_vfio[g_nvfio].n = n;
            g_nvfio++;
        }
    }
    syscall(SYS_close, dfd);
    return 1;
}

/* Is st_dev possibly our mount? Cheap: one atomic load and a compare, after
 * a one-time statx of the root (which sends no FUSE request). */
static int maybe_ours(dev_t dev)
{
    int st = atomic_load_explicit(&g_mstate, memory_order_acquire);
    if (st == M_ABSENT || !g_root[0])
        return 0;
    if (st == M_UNKNOWN) {
        int saved = errno;
        sigset_t old;
        lock(&old);
        if (atomic_load(&g_mstate) == M_UNKNOWN) {
            struct statx sx;
            if (sys_statx(AT_FDCWD, g_root, AT_STATX_DONT_SYNC, STATX_INO, &sx) == 0) {
                g_dev = makedev(sx.stx_dev_major, sx.stx_dev_minor);
                atomic_store(&g_mstate, M_HINT);
            } else {
                dbg("IOMMUFS_ROOT %s: cannot stat it (errno %d): inert", g_root, errno);
                atomic_store(&g_mstate, M_ABSENT);
            }
        }
        unlock(&old);
        errno = saved;
        st = atomic_load(&g_mstate);
        if (st == M_ABSENT)
            return 0;
    }
    return dev == g_dev;
}

/* The mount confirmed and its nodes learnt (once); 0 if not iommufs. */
static int ready(void)
{
    int st = atomic_load_explicit(&g_mstate, memory_order_acquire);
    if (st == M_READY)
        return 1;
    if (st != M_HINT)
        return 0;
    sigset_t old;
    lock(&old);
    if (atomic_load(&g_mstate) == M_HINT) {
        int saved = errno;
        dev_t dev;
        if (mount_dev(&dev) && dev == g_dev && learn_nodes()) {
            dbg("mount %s: dev %u:%u, iommu ino %u, %d vfio nodes", g_root, major(dev),
                minor(dev), (unsigned)g_iommu_ino, g_nvfio);
            atomic_store(&g_mstate, M_READY);
        } else {
            dbg("IOMMUFS_ROOT %s is not an iommufs mount: inert", g_root);
            atomic_store(&g_mstate, M_ABSENT);
        }
        errno = saved;
    }
    unlock(&old);
    return atomic_load(&g_mstate) == M_READY;
}

/* What file (dev, ino) is; *minor gets the vfio node number. */
static enum kind classify(dev_t dev, ino_t ino, unsigned int *minor)
{
    if (!maybe_ours(dev) || !ready())
        return K_NONE;
    if (ino == g_iommu_ino)
        return K_IOMMU;
    for (int i = 0; i < g_nvfio; i++)
        if (g_vfio[i].ino == ino) {
            if (minor) *minor = g_vfio[i].n;
            return K_VFIO;
        }
    return K_OTHER;
}

/* The kind of open file fd (K_NONE on any error); no FUSE request. */
static enum kind fd_kind(int fd, ino_t *ino, unsigned int *minor)
{
    struct statx sx;
    int saved = errno;
    int r = sys_statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_INO, &sx);
    errno = saved;
    if (r != 0)
        return K_NONE;
    if (ino) *ino = sx.stx_ino;
    return classify(makedev(sx.stx_dev_major, sx.stx_dev_minor), sx.stx_ino, minor);
}

/* ------------------------------------------------------ open files and fds */

/* One open file description of an iommu/VFIO node opened in this process:
 * how many fds of ours refer to it, and whether anyone else may. */
struct ofd {
    int refs;          /* 0 = free slot */
    int shared;
    int kind;
    unsigned int minor;
    ino_t ino;
};
#define MAX_OFD 1024
static struct ofd g_ofd[MAX_OFD];
static int g_tracked;                       /* fds in the table (lock held) */

/* fd -> slot+1 (0 = not ours), in pages allocated on first use. */
#define FD_PAGE 4096
#define FD_PAGES 256                        /* fds below 1 << 20 */
static int32_t *_Atomic g_fdpage[FD_PAGES];

static int fd_slot(int fd)
{
    if (fd < 0 || fd >= FD_PAGE * FD_PAGES)
        return -1;
    int32_t *page = atomic_load_explicit(&g_fdpage[fd / FD_PAGE], memory_order_acquire);
    if (!page)
        return -1;
    return __atomic_load_n(&page[fd % FD_PAGE], __ATOMIC_ACQUIRE) - 1;
}

/* Lock held. Returns 0 if fd cannot be tracked (too large, no memory). */
static int fd_put(int fd, int slot)
{
    if (fd < 0 || fd >= FD_PAGE * FD_PAGES)
        return 0;
    int32_t *page = atomic_load(&g_fdpage[fd / FD_PAGE]);
    if (!page) {
        if (slot < 0)
            return 1;
        page = mmap(NULL, FD_PAGE * sizeof(int32_t), PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED)
            return 0;
        atomic_store(&g_fdpage[fd / FD_PAGE], page);
    }
    int was = page[fd % FD_PAGE];
    __atomic_store_n(&page[fd % FD_PAGE], slot + 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&g_tracked, (slot >= 0) - (was != 0), __ATOMIC_RELAXED);
    return 1;
}

/* Lock held: drop fd's reference; returns 1 if that was the last one of an
 * open file nobody else may hold (the caller then closes it synchronously). */
static int fd_drop(int fd, int *kind)
{
    int s = fd_slot(fd);
    if (s < 0)
        return 0;
    fd_put(fd, -1);
    struct ofd *o = &g_ofd[s];
    if (kind) *kind = o->kind;
    if (--o->refs > 0)
        return 0;
    int sync = !o->shared;
    memset(o, 0, sizeof(*o));
    return sync;
}

/* Lock held: make newfd another reference to oldfd's open file (or
 * forget newfd if oldfd is not ours). */
static void fd_dup(int oldfd, int newfd)
{
    int s = fd_slot(oldfd);
    fd_drop(newfd, NULL);            /* a stale entry: closed behind our back */
    if (s < 0)
        return;
    if (fd_put(newfd, s))
        g_ofd[s].refs++;
    else
        g_ofd[s].shared = 1;         /* an fd we cannot follow: never tear down */
}

/* A new open file of kind k (inode ino) on fd, ours alone so far; returns
 * 0 if it cannot be tracked (it then gets a plain close). */
static int track(int fd, enum kind k, unsigned int minor, ino_t ino)
{
    sigset_t old;
    lock(&old);
    fd_drop(fd, NULL);
    int s;
    for (s = 0; s < MAX_OFD && g_ofd[s].refs; s++)
        ;
    int ok = s < MAX_OFD && fd_put(fd, s);
    if (ok) {
        g_ofd[s].refs = 1;
        g_ofd[s].shared = 0;
        g_ofd[s].kind = k;
        g_ofd[s].minor = minor;
        g_ofd[s].ino = ino;
    }
    unlock(&old);
    return ok;
}

/* A fresh open of fd, seen by an open hook. */
static void track_open(int fd, int flags, const char *path)
{
    ino_t ino = 0;
    unsigned int minor = 0;
    /* O_PATH opens no file on the server side: nothing to close there */
    enum kind k = (flags & O_PATH) ? K_NONE : fd_kind(fd, &ino, &minor);
    if (k != K_IOMMU && k != K_VFIO) {
        if (fd_slot(fd) >= 0) {       /* stale entry of an fd closed behind our back */
            sigset_t old;
            lock(&old);
            fd_drop(fd, NULL);
            unlock(&old);
        }
        return;
    }
    int ok = track(fd, k, minor, ino);
    if (k == K_IOMMU)
        dbg("open %s -> fd %d: iommu%s", path, fd, ok ? "" : " (untracked)");
    else
        dbg("open %s -> fd %d: vfio%u%s", path, fd, minor, ok ? "" : " (untracked)");
}

/* Mark shared every tracked open file (all = 1) or those with an fd that
 * survives exec (all = 0). Lock held. */
static int mark_shared_locked(int all)
{
    int n = 0;
    if (!g_tracked)
        return 0;
    for (int p = 0; p < FD_PAGES; p++) {
        int32_t *page = atomic_load(&g_fdpage[p]);
        if (!page)
            continue;
        for (int i = 0; i < FD_PAGE; i++) {
            int s = page[i] - 1;
            if (s < 0 || g_ofd[s].shared)
                continue;
            if (!all) {
                long fl = syscall(SYS_fcntl, p * FD_PAGE + i, F_GETFD);
                if (fl >= 0 && (fl & FD_CLOEXEC))
                    continue;
            }
            g_ofd[s].shared = 1;
            n++;
        }
    }
    return n;
}

static void mark_shared(int all, const char *why)
{
    if (!__atomic_load_n(&g_tracked, __ATOMIC_RELAXED))
        return;
    sigset_t old;
    lock(&old);
    int n = mark_shared_locked(all);
    unlock(&old);
    if (n)
        dbg("%s: %d open file(s) now shared", why, n);
}

/* fork(): both processes hold every open file. */
static __thread sigset_t t_fork_mask __attribute__((tls_model("initial-exec")));

static void atfork_prepare(void) { lock(&t_fork_mask); }

static void atfork_parent(void)
{
    int n = mark_shared_locked(1);
    unlock(&t_fork_mask);
    if (n)
        dbg("fork: %d open file(s) now shared", n);
}

static void atfork_child(void)
{
    mark_shared_locked(1);
    unlock(&t_fork_mask);
}

/* close() of fd: the synchronous teardown when it is the last reference. */
static void before_close(int fd)
{
    if (fd_slot(fd) < 0)
        return;
    sigset_t old;
    int kind = 0;
    lock(&old);
    int s = fd_slot(fd);
    ino_t ino = s >= 0 ? g_ofd[s].ino : 0;
    int shared = s >= 0 && g_ofd[s].shared;
    int sync = s >= 0 && fd_drop(fd, &kind);
    unlock(&old);
    if (s < 0)
        return;
    if (!sync) {
        dbg("close fd %d: %s, plain close", fd, shared ? "shared" : "other fds remain");
        return;
    }
    /* Still the file it was (an fd may have been closed and reused behind
     * our back, by a raw syscall): a node under fds/ classifies as K_OTHER. */
    ino_t now;
    int want = kind == K_FAULT || kind == K_ACCESS ? K_OTHER : kind;
    if ((int)fd_kind(fd, &now, NULL) != want || now != ino) {
        dbg("close fd %d: no longer the file opened, plain close", fd);
        return;
    }
    int saved = errno;
    int r = REAL(ioctl)(fd, IOMMUFS_SYNC_CLOSE, 0);
    dbg("close fd %d: last reference, sync close -> %d", fd, r < 0 ? -errno : r);
    errno = saved;
}

/* -------------------------------------------------------------- init */

static void init(void)
{
    int expect = 0;
    if (!atomic_compare_exchange_strong(&g_inited, &expect, 1))
        return;
    resolve_all();
    const char *d = getenv("IOMMUFS_DEBUG");
    g_debug = d && *d && strcmp(d, "0") != 0;
    const char *r = getenv("IOMMUFS_REDIRECT");
    g_redirect = !(r && strcmp(r, "0") == 0);
    const char *root = getenv("IOMMUFS_ROOT");
    if (root && *root) {
        char *canon = realpath(root, NULL);
        const char *use = canon ? canon : root;
        size_t n = strlen(use);
        while (n > 1 && use[n - 1] == '/')
            n--;
        if (n < ROOT_MAX) {
            memcpy(g_root, use, n);
            g_root[n] = 0;
            g_root_len = n;
        } else {
            dbg("IOMMUFS_ROOT longer than %d bytes: inert", ROOT_MAX - 1);
        }
        free(canon);
    }
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
    atomic_store(&g_inited, 2);
}

__attribute__((constructor)) static void iofs_constructor(void) { init(); }

/* A hook called before the constructor (another library's constructor)
 * resolves what it needs. */
#define ENSURE(name) do { if (!REAL(name)) { init(); if (!REAL(name)) RESOLVE(name); } } while (0)

/* ----------------------------------------------------------- path redirect */

/* /dev/iommu and /dev/vfio/devices/vfioN -> their nodes under the root. */
static const char *redirect(const char *path, char *buf)
{
    if (!g_redirect || !g_root[0] || !path || path[0] != '/' || strncmp(path, "/dev/", 5) != 0)
        return path;
    const char *tail;
    if (strcmp(path, "/dev/iommu") == 0) {
        tail = "/iommu";
    } else if (strncmp(path, "/dev/vfio/devices/vfio", 22) == 0 && path[22]) {
        const char *q = path + 22;
        while (*q >= '0' && *q <= '9') q++;
        if (*q || q - (path + 22) > 10)
            return path;
        tail = path + 4;              /* "/vfio/devices/vfioN" */
    } else {
        return path;
    }
    memcpy(buf, g_root, g_root_len);
    strcpy(buf + g_root_len, tail);
    dbg("redirect %s -> %s", path, buf);
    return buf;
}

#define NEEDS_MODE(flags) (((flags) & O_CREAT) || ((flags) & O_TMPFILE) == O_TMPFILE)
#define GET_MODE(flags, last)                       \
    mode_t mode = 0;                                \
    if (NEEDS_MODE(flags)) {                        \
        va_list ap;                                 \
        va_start(ap, last);                         \
        mode = (mode_t)va_arg(ap, int);             \
        va_end(ap);                                 \
    }

static int after_open(int fd, int flags, const char *path)
{
    if (fd >= 0 && g_root[0])
        track_open(fd, flags, path);
    return fd;
}

/* ------------------------------------------------------------- open hooks */

EXPORT int open(const char *path, int flags, ...)
{
    GET_MODE(flags, flags);
    ENSURE(open);
    char buf[PATH_BUF];
    const char *p = redirect(path, buf);
    return after_open(REAL(open)(p, flags, mode), flags, path);
}

EXPORT int open64(const char *path, int flags, ...)
{
    GET_MODE(flags, flags);
    ENSURE(open64);
    char buf[PATH_BUF];
    const char *p = redirect(path, buf);
    return after_open(REAL(open64)(p, flags, mode), flags, path);
}

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
    GET_MODE(flags, flags);
    ENSURE(openat);
    char buf[PATH_BUF];
    const char *p = redirect(path, buf);
    return after_open(REAL(openat)(dirfd, p, flags, mode), flags, path);
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
    GET_MODE(flags, flags);
    ENSURE(openat64);
    char buf[PATH_BUF];
    const char *p = redirect(path, buf);
    return after_open(REAL(openat64)(dirfd, p, flags, mode), flags, path);
}

EXPORT int __open_2(const char *path, int flags)
{
    ENSURE(__open_2);
    char buf[PATH_BUF];
    const char *p = redirect(path, buf);
    return after_open(REAL(__open_2)(p, flags), flags, path);
}

EXPORT int __open64_2(const char *path, int flags)
{
    ENSURE(__open64_2);
    char buf[PATH_BUF];
    const char *p = redirect(path, buf);
    return after_open(REAL(__open64_2)(p, flags), flags, path);
}

EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
    ENSURE(__openat_2);
    char buf[PATH_BUF];
    const char *p = redirect(path, buf);
    return after_open(REAL(__openat_2)(dirfd, p, flags), flags, path);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
    ENSURE(__openat64_2);
    char buf[PATH_BUF];
    const char *p = redirect(path, buf);
    return after_open(REAL(__openat64_2)(dirfd, p, flags), flags, path);
}

/* fopen: redirected only; its fd is closed by fclose inside libc, so it is
 * never tracked (a plain close). */
EXPORT FILE *fopen(const char *path, const char *mode)
{
    ENSURE(fopen);
    char buf[PATH_BUF];
    return REAL(fopen)(redirect(path, buf), mode);
}

EXPORT FILE *fopen64(const char *path, const char *mode)
{
    ENSURE(fopen64);
    char buf[PATH_BUF];
    return REAL(fopen64)(redirect(path, buf), mode);
}

EXPORT int access(const char *path, int amode)
{
    ENSURE(access);
    char buf[PATH_BUF];
    return REAL(access)(redirect(path, buf), amode);
}

EXPORT int faccessat(int dirfd, const char *path, int amode, int flags)
{
    ENSURE(faccessat);
    char buf[PATH_BUF];
    return REAL(faccessat)(dirfd, redirect(path, buf), amode, flags);
}

/* ------------------------------------------------------------ close and dup */

EXPORT int close(int fd)
{
    ENSURE(close);
    before_close(fd);
    return REAL(close)(fd);
}

static void before_close_range(unsigned int first, unsigned int last)
{
    if (!__atomic_load_n(&g_tracked, __ATOMIC_RELAXED))
        return;
    for (int p = 0; p < FD_PAGES; p++) {
        int32_t *page = atomic_load(&g_fdpage[p]);
        if (!page)
            continue;
        for (int i = 0; i < FD_PAGE; i++) {
            unsigned int fd = (unsigned int)(p * FD_PAGE + i);
            if (fd >= first && fd <= last && __atomic_load_n(&page[i], __ATOMIC_ACQUIRE))
                before_close((int)fd);
        }
    }
}

EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
    ENSURE(close_range);
    if (!(flags & CLOSE_RANGE_CLOEXEC) && first <= last)
        before_close_range(first, last);
    return REAL(close_range)(first, last, flags);
}

EXPORT void closefrom(int lowfd)
{
    ENSURE(closefrom);
    if (lowfd >= 0)
        before_close_range((unsigned int)lowfd, ~0u);
    REAL(closefrom)(lowfd);
}

static int after_dup(int oldfd, int newfd)
{
    if (newfd < 0 || (fd_slot(oldfd) < 0 && fd_slot(newfd) < 0))
        return newfd;
    sigset_t old;
    lock(&old);
    fd_dup(oldfd, newfd);
    unlock(&old);
    if (fd_slot(newfd) >= 0)
        dbg("dup fd %d -> %d", oldfd, newfd);
    return newfd;
}

EXPORT int dup(int fd)
{
    ENSURE(dup);
    return after_dup(fd, REAL(dup)(fd));
}

/* dup2/dup3 close newfd first: that close may be the last reference. */
static void before_dup2(int oldfd, int newfd)
{
    if (oldfd == newfd || fd_slot(newfd) < 0)
        return;
    if (syscall(SYS_fcntl, oldfd, F_GETFD) < 0)
        return;                       /* dup2 will fail with EBADF and close nothing */
    before_close(newfd);
}

EXPORT int dup2(int oldfd, int newfd)
{
    ENSURE(dup2);
    int saved = errno;
    before_dup2(oldfd, newfd);
    errno = saved;
    int r = REAL(dup2)(oldfd, newfd);
    if (r >= 0 && oldfd != newfd)
        after_dup(oldfd, r);
    return r;
}

EXPORT int dup3(int oldfd, int newfd, int flags)
{
    ENSURE(dup3);
    int saved = errno;
    if (oldfd != newfd)
        before_dup2(oldfd, newfd);
    errno = saved;
    int r = REAL(dup3)(oldfd, newfd, flags);
    if (r >= 0)
        after_dup(oldfd, r);
    return r;
}

static int fcntl_common(int (*real)(int, int, ...), int fd, int cmd, void *arg)
{
    int r = real(fd, cmd, arg);
    if ((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && r >= 0)
        after_dup(fd, r);
    return r;
}

EXPORT int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    ENSURE(fcntl);
    return fcntl_common(REAL(fcntl), fd, cmd, arg);
}

EXPORT int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    ENSURE(fcntl64);
    return fcntl_common(REAL(fcntl64), fd, cmd, arg);
}

/* ------------------------------------------- other processes may hold them */

/* _Fork runs no atfork handlers: do their work, holding the lock across
 * the fork so that the child never inherits it held by another thread. */
EXPORT pid_t _Fork(void)
{
    ENSURE(_Fork);
    sigset_t old;
    lock(&old);
    mark_shared_locked(1);
    pid_t r = REAL(_Fork)();
    int saved = errno;
    unlock(&old);
    errno = saved;
    return r;
}

EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                       const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    ENSURE(posix_spawn);
    mark_shared(0, "posix_spawn");
    return REAL(posix_spawn)(pid, path, fa, attr, argv, envp);
}

EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                        const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    ENSURE(posix_spawnp);
    mark_shared(0, "posix_spawnp");
    return REAL(posix_spawnp)(pid, file, fa, attr, argv, envp);
}

/* A dup2 action hands fd to a child whatever its FD_CLOEXEC. */
EXPORT int posix_spawn_file_actions_adddup2(posix_spawn_file_actions_t *fa, int fd, int newfd)
{
    ENSURE(posix_spawn_file_actions_adddup2);
    int s = fd_slot(fd);
    if (s >= 0) {
        sigset_t old;
        lock(&old);
        if (fd_slot(fd) == s)
            g_ofd[s].shared = 1;
        unlock(&old);
        dbg("spawn dup2 action of fd %d: shared", fd);
    }
    return REAL(posix_spawn_file_actions_adddup2)(fa, fd, newfd);
}

EXPORT int system(const char *cmd)
{
    ENSURE(system);
    if (cmd)
        mark_shared(0, "system");
    return REAL(system)(cmd);
}

EXPORT FILE *popen(const char *cmd, const char *type)
{
    ENSURE(popen);
    mark_shared(0, "popen");
    return REAL(popen)(cmd, type);
}

/* SCM_RIGHTS: the receiver holds the open file too. */
EXPORT ssize_t sendmsg(int sock, const struct msghdr *msg, int flags)
{
    ENSURE(sendmsg);
    if (msg && msg->msg_controllen && __atomic_load_n(&g_tracked, __ATOMIC_RELAXED)) {
        for (struct cmsghdr *c = CMSG_FIRSTHDR((struct msghdr *)msg); c;
             c = CMSG_NXTHDR((struct msghdr *)msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int fds[n ? n : 1];
            memcpy(fds, CMSG_DATA(c), n * sizeof(int));
            for (size_t i = 0; i < n; i++) {
                int s = fd_slot(fds[i]);
                if (s < 0)
                    continue;
                sigset_t old;
                lock(&old);
                if (fd_slot(fds[i]) == s)
                    g_ofd[s].shared = 1;
                unlock(&old);
                dbg("SCM_RIGHTS of fd %d: shared", fds[i]);
            }
        }
    }
    return REAL(sendmsg)(sock, msg, flags);
}

/* vfork cannot be wrapped by a C function (the child would return through
 * the wrapper's frame, which the parent then reuses): a trampoline marks
 * every open file shared and jumps to the real vfork with the caller's
 * stack untouched. x86-64 only; elsewhere vfork is not hooked. */
HIDDEN void iofs_before_vfork(void)
{
    if (!iofs_real_vfork)
        init();
    if (!iofs_real_vfork)
        __atomic_store_n(&iofs_real_vfork, next_sym("vfork"), __ATOMIC_RELEASE);
    mark_shared(1, "vfork");
}

#if defined(__x86_64__)
__asm__(".text\n"
        ".globl vfork\n"
        ".type vfork, @function\n"
        "vfork:\n"
        "\tsubq $8, %rsp\n"
        "\tcall iofs_before_vfork\n"
        "\taddq $8, %rsp\n"
        "\tjmp *iofs_real_vfork(%rip)\n"
        ".size vfork, .-vfork\n");
#endif

/* ------------------------------------------------------------------- ioctl */

/* The op of an IOMMU_TEST_CMD argument the kernel has just read. */
static __u32 test_op(const void *arg)
{
    __u32 op;
    memcpy(&op, (const char *)arg + offsetof(struct iommu_test_cmd, op), sizeof(op));
    return op;
}

/* fd_off of an ioctl whose result, not a struct field, is the new fd. */
#define FD_IS_RESULT ((size_t)-1)

/* After a successful fd-returning ioctl on our iommufd: open the node the
 * server made and put its fd where the kernel would have. The fds of fault
 * queues and accesses are tracked: their last close is synchronous. */
static int fd_returning(int fd, unsigned long req, void *arg, int result)
{
    size_t fd_off, id_off = 0;        /* id_off 0: no object id to destroy */
    enum kind k = K_NONE;             /* K_NONE: an fd left untracked */
    if (req == IOMMU_FAULT_QUEUE_ALLOC) {
        fd_off = offsetof(struct iommu_fault_alloc, out_fault_fd);
        id_off = offsetof(struct iommu_fault_alloc, out_fault_id);
        k = K_FAULT;
    } else if (req == IOMMU_VEVENTQ_ALLOC) {
        fd_off = offsetof(struct iommu_veventq_alloc, out_veventq_fd);
        id_off = offsetof(struct iommu_veventq_alloc, out_veventq_id);
    } else if (req == IOMMU_TEST_CMD && arg && test_op(arg) == IOMMU_TEST_OP_CREATE_ACCESS) {
        fd_off = offsetof(struct iommu_test_cmd, create_access.out_access_fd);
        k = K_ACCESS;
    } else if (req == IOMMU_TEST_CMD && arg && test_op(arg) == IOMMU_TEST_OP_DMABUF_GET) {
        fd_off = FD_IS_RESULT;        /* the kernel returns the dma-buf fd itself */
    } else {
        return result;
    }
    if (!arg || fd_kind(fd, NULL, NULL) != K_IOMMU)
        return result;
    int saved = errno;
    struct iommufs_fd_path p;
    memset(&p, 0, sizeof(p));
    p.size = sizeof(p);
    p.index = 0;
    if (REAL(ioctl)(fd, IOMMUFS_FD_PATH, &p) != 0) {
        dbg("ioctl %x on fd %d: IOMMUFS_FD_PATH failed (errno %d): fd field left as is",
            (unsigned)req, fd, errno);
        errno = saved;
        return result;
    }
    p.path[sizeof(p.path) - 1] = 0;
    char path[PATH_BUF + sizeof(p.path)];
    memcpy(path, g_root, g_root_len);
    path[g_root_len] = '/';
    strcpy(path + g_root_len + 1, p.path);
    int nfd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDWR | O_CLOEXEC, 0);
    if (nfd < 0) {
        /* As the kernel when it has no fd to give: the ioctl fails and the
         * object goes. The object holds its node until the node has been
         * opened and closed, so open it once in a slot lent by a soft
         * RLIMIT_NOFILE one higher (EMFILE); if that cannot be done the
         * object stays until the context is closed. */
        int err = errno;
        struct rlimit lim, more;        /* struct rlimit64 of prlimit64 on LP64 */
        int tmp = -1;
        if (err == EMFILE && syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, NULL, &lim) == 0
            && lim.rlim_cur < lim.rlim_max) {
            more = lim;
            more.rlim_cur++;
            if (syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, &more, NULL) == 0) {
                tmp = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDWR | O_CLOEXEC, 0);
                if (tmp >= 0) {
                    /* released now: the DESTROY below must not find it held */
                    REAL(ioctl)(tmp, IOMMUFS_SYNC_CLOSE, 0);
                    syscall(SYS_close, tmp);
                }
                syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, &lim, NULL);
            }
        }
        int destroyed = -1;
        if (tmp >= 0 && id_off) {
            struct iommu_destroy d = { sizeof(d), 0 };
            memcpy(&d.id, (char *)arg + id_off, sizeof(d.id));
            destroyed = REAL(ioctl)(fd, IOMMU_DESTROY, &d);
        }
        dbg("ioctl %x on fd %d: open %s failed (errno %d): %s", (unsigned)req, fd, path, err,
            tmp < 0 ? "object left until the context closes"
                    : destroyed == 0 || !id_off ? "object released" : "object not destroyed");
        errno = err;
        return -1;
    }
    if (fd_off == FD_IS_RESULT) {
        dbg("ioctl %x on fd %d: %s -> fd %d (the result)", (unsigned)req, fd, p.path, nfd);
        errno = saved;
        return nfd;
    }
    __s32 v = nfd;
    memcpy((char *)arg + fd_off, &v, sizeof(v));
    ino_t ino;
    int tracked = k != K_NONE && fd_kind(nfd, &ino, NULL) == K_OTHER && track(nfd, k, 0, ino);
    dbg("ioctl %x on fd %d: %s -> fd %d%s", (unsigned)req, fd, p.path, nfd,
        k == K_NONE || tracked ? "" : " (untracked)");
    errno = saved;
    return result;
}

/* ------------------------------------------------ KVM's VFIO pseudo-device */

/* With KVM, a VMM adds each VFIO device fd to the VM's KVM_DEV_TYPE_VFIO
 * device (KVM_SET_DEVICE_ATTR, group KVM_DEV_VFIO_FILE, FILE_ADD/DEL;
 * reference vfio-device.md §11) before BIND, and the kernel refuses a file
 * that is not its own VFIO file (EINVAL). For an iommufs VFIO fd KVM would
 * only learn coherency and driver hooks, none of which an emulated device
 * has, so the shim answers for those fds with the kernel's bookkeeping
 * (EEXIST added twice, ENOENT deleting one never added) and passes every
 * other fd through. */
#define IOFS_KVM_SET_DEVICE_ATTR 0x4018aee1UL    /* _IOW(0xAE, 0xe1, 24-byte attr) */
#define IOFS_KVM_DEV_VFIO_FILE 1
#define IOFS_KVM_DEV_VFIO_FILE_ADD 1
#define IOFS_KVM_DEV_VFIO_FILE_DEL 2
#define IOFS_KVM_FILES 64

struct iofs_kvm_device_attr { uint32_t flags, group; uint64_t attr, addr; };

static struct { int kvm_fd; ino_t ino; } g_kvm_files[IOFS_KVM_FILES];
static pthread_mutex_t g_kvm_lock = PTHREAD_MUTEX_INITIALIZER;

/* Copy n bytes from our own address p without faulting on a bad pointer
 * (the kernel gives EFAULT there, not a crash). */
static int self_read(void *dst, const void *p, size_t n)
{
    struct iovec l = { dst, n }, r = { (void *)p, n };
    return process_vm_readv(getpid(), &l, 1, &r, 1, 0) == (ssize_t)n ? 0 : -EFAULT;
}

/* 1 and *ret set when the call was for an iommufs VFIO fd; 0 to pass on. */
static int kvm_vfio_file(int kvm_fd, const void *arg, int *ret)
{
    struct iofs_kvm_device_attr a;
    int32_t vfd;
    ino_t ino;

    if (!arg || self_read(&a, arg, sizeof(a)) < 0)
        return 0;
    if (a.group != IOFS_KVM_DEV_VFIO_FILE ||
        (a.attr != IOFS_KVM_DEV_VFIO_FILE_ADD && a.attr != IOFS_KVM_DEV_VFIO_FILE_DEL))
        return 0;
    if (self_read(&vfd, (const void *)(uintptr_t)a.addr, sizeof(vfd)) < 0)
        return 0;
    if (fd_kind(vfd, &ino, NULL) != K_VFIO)
        return 0;
    pthread_mutex_lock(&g_kvm_lock);
    int at = -1, free_slot = -1;
    for (int i = 0; i < IOFS_KVM_FILES; i++) {
        if (g_kvm_files[i].kvm_fd == kvm_fd + 1 && g_kvm_files[i].ino == ino)
            at = i;
        else if (!g_kvm_files[i].kvm_fd && free_slot < 0)
            free_slot = i;
    }
    int e = 0;
    if (a.attr == IOFS_KVM_DEV_VFIO_FILE_ADD) {
        if (at >= 0)
            e = EEXIST;
        else if (free_slot < 0)
            e = ENOMEM;
        else {
            g_kvm_files[free_slot].kvm_fd = kvm_fd + 1;   /* 0 marks a free slot */
            g_kvm_files[free_slot].ino = ino;
        }
    } else if (at < 0) {
        e = ENOENT;
    } else {
        g_kvm_files[at].kvm_fd = 0;
    }
    pthread_mutex_unlock(&g_kvm_lock);
    dbg("KVM VFIO file %s of fd %d: %d", a.attr == 1 ? "add" : "del", vfd, e);
    if (e)
        errno = e;
    *ret = e ? -1 : 0;
    return 1;
}

/* ------------------------------------------- the legacy group's device fd */

/* VFIO_GROUP_GET_DEVICE_FD returns a device fd as its result (reference
 * vfio-device.md §10). The server cannot make an fd here: it answers with
 * a placeholder and names the fd's node through IOMMUFS_FD_PATH, as for an
 * fd field; the shim opens that node and returns the new fd instead. */
#define IOFS_VFIO_GROUP_GET_DEVICE_FD 0x3b6aUL

static int group_device_fd(int fd, int result)
{
    if (fd_kind(fd, NULL, NULL) != K_OTHER)
        return result;
    int saved = errno;
    struct iommufs_fd_path p;
    memset(&p, 0, sizeof(p));
    p.size = sizeof(p);
    if (REAL(ioctl)(fd, IOMMUFS_FD_PATH, &p) != 0) {
        errno = saved;
        return result;
    }
    p.path[sizeof(p.path) - 1] = 0;
    if (strncmp(p.path, "fds/vfio-dev-", 13) != 0) {
        errno = saved;
        return result;
    }
    char path[PATH_BUF + sizeof(p.path)];
    memcpy(path, g_root, g_root_len);
    path[g_root_len] = '/';
    strcpy(path + g_root_len + 1, p.path);
    /* The kernel's device fd is O_RDWR | O_CLOEXEC. */
    int nfd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDWR | O_CLOEXEC, 0);
    if (nfd < 0)
        return -1;
    ino_t ino;
    if (fd_kind(nfd, &ino, NULL) != K_NONE)
        track(nfd, K_VFIO, 0, ino);
    dbg("GET_DEVICE_FD on fd %d -> fd %d (%s)", fd, nfd, p.path);
    errno = saved;
    return nfd;
}

EXPORT int ioctl(int fd, unsigned long req, ...)
{
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    ENSURE(ioctl);
    int kr;
    if (req == IOFS_KVM_SET_DEVICE_ATTR && g_root[0] && kvm_vfio_file(fd, arg, &kr))
        return kr;
    int r = REAL(ioctl)(fd, req, arg);
    if (r >= 0 && req == IOFS_VFIO_GROUP_GET_DEVICE_FD && g_root[0])
        return group_device_fd(fd, r);
    if (r < 0 || (req != IOMMU_FAULT_QUEUE_ALLOC && req != IOMMU_VEVENTQ_ALLOC && req != IOMMU_TEST_CMD))
        return r;
    return fd_returning(fd, req, arg, r);
}

/* ------------------------------------------------------------------- stat */

static void fix_stat(struct stat *st)
{
    unsigned int minor = 0;
    enum kind k = classify(st->st_dev, st->st_ino, &minor);
    if (k == K_IOMMU) {
        st->st_mode = S_IFCHR | (st->st_mode & 07777);
        st->st_rdev = makedev(IOMMU_MAJOR, IOMMU_MINOR);
    } else if (k == K_VFIO) {
        st->st_mode = S_IFCHR | (st->st_mode & 07777);
        st->st_rdev = makedev(VFIO_DEV_MAJOR, minor);
    }
}

/* struct stat64 is struct stat on LP64 glibc; keep one fixer. */
_Static_assert(sizeof(struct stat) == sizeof(struct stat64), "LP64 glibc");
#define FIX(st, r) do { if ((r) == 0 && g_root[0]) { int e_ = errno; fix_stat((struct stat *)(st)); errno = e_; } } while (0)

/* Every stat entry point is the same hook: redirect the path (if it has
 * one), call the real function, report our nodes as character devices.
 * A macro, so that the list below is the only thing that differs. */
#define STAT_HOOK(name, params, args)           \
    EXPORT int name params                      \
    {                                           \
        ENSURE(name);                           \
        char buf[PATH_BUF];                     \
        (void)buf;                              \
        int r = REAL(name) args;                \
        FIX(st, r);                             \
        return r;                               \
    }

STAT_HOOK(stat, (const char *path, struct stat *st), (redirect(path, buf), st))
STAT_HOOK(stat64, (const char *path, struct stat64 *st), (redirect(path, buf), st))
STAT_HOOK(lstat, (const char *path, struct stat *st), (redirect(path, buf), st))
STAT_HOOK(lstat64, (const char *path, struct stat64 *st), (redirect(path, buf), st))
STAT_HOOK(fstat, (int fd, struct stat *st), (fd, st))
STAT_HOOK(fstat64, (int fd, struct stat64 *st), (fd, st))
STAT_HOOK(fstatat, (int dirfd, const char *path, struct stat *st, int flags),
          (dirfd, redirect(path, buf), st, flags))
STAT_HOOK(fstatat64, (int dirfd, const char *path, struct stat64 *st, int flags),
          (dirfd, redirect(path, buf), st, flags))

/* The pre-2.33 glibc ABI: old binaries call these instead of stat & co. */
STAT_HOOK(__xstat, (int ver, const char *path, struct stat *st), (ver, redirect(path, buf), st))
STAT_HOOK(__xstat64, (int ver, const char *path, struct stat64 *st), (ver, redirect(path, buf), st))
STAT_HOOK(__lxstat, (int ver, const char *path, struct stat *st), (ver, redirect(path, buf), st))
STAT_HOOK(__lxstat64, (int ver, const char *path, struct stat64 *st), (ver, redirect(path, buf), st))
STAT_HOOK(__fxstat, (int ver, int fd, struct stat *st), (ver, fd, st))
STAT_HOOK(__fxstat64, (int ver, int fd, struct stat64 *st), (ver, fd, st))
STAT_HOOK(__fxstatat, (int ver, int dirfd, const char *path, struct stat *st, int flags),
          (ver, dirfd, redirect(path, buf), st, flags))
STAT_HOOK(__fxstatat64, (int ver, int dirfd, const char *path, struct stat64 *st, int flags),
          (ver, dirfd, redirect(path, buf), st, flags))

EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *sx)
{
    ENSURE(statx);
    char buf[PATH_BUF];
    int r = REAL(statx)(dirfd, redirect(path, buf), flags, mask, sx);
    if (r != 0 || !g_root[0] || !(sx->stx_mask & STATX_INO))
        return r;
    int saved = errno;
    unsigned int minor = 0;
    enum kind k = classify(makedev(sx->stx_dev_major, sx->stx_dev_minor), sx->stx_ino, &minor);
    if (k == K_IOMMU || k == K_VFIO) {
        sx->stx_mode = (uint16_t)(S_IFCHR | (sx->stx_mode & 07777));
        sx->stx_rdev_major = k == K_IOMMU ? IOMMU_MAJOR : VFIO_DEV_MAJOR;
        sx->stx_rdev_minor = k == K_IOMMU ? IOMMU_MINOR : minor;
    }
    errno = saved;
    return r;
}
