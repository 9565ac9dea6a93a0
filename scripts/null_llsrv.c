/* The C baseline of the transport benchmark (scripts/bench_transport.py):
 * the least a libfuse3 low-level server can do to answer IOMMUFS_NULL.
 * Not product code.
 *
 *   gcc -O2 -o null_llsrv null_llsrv.c $(pkg-config --cflags --libs fuse3)
 *   ./null_llsrv MOUNTPOINT            # foreground; SIGINT/SIGTERM unmount
 *
 * One regular file, /iommu, opened like iommufs's nodes (direct_io,
 * nonseekable), mounted with the same options, served by libfuse's
 * single-threaded loop. ioctl(IOMMUFS_NULL) answers 0; others ENOTTY.
 */
#define FUSE_USE_VERSION 35
#include <errno.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define IOMMUFS_NULL 0xF500
#define FILE_INO 2

static void fill(fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_ino = ino;
    st->st_mode = ino == FUSE_ROOT_ID ? (S_IFDIR | 0755) : (S_IFREG | 0666);
    st->st_nlink = ino == FUSE_ROOT_ID ? 2 : 1;
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct fuse_entry_param e;
    if (parent != FUSE_ROOT_ID || strcmp(name, "iommu") != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    memset(&e, 0, sizeof(e));
    e.ino = FILE_INO;
    e.attr_timeout = e.entry_timeout = 3600.0;
    fill(FILE_INO, &e.attr);
    fuse_reply_entry(req, &e);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct stat st;
    (void)fi;
    if (ino != FUSE_ROOT_ID && ino != FILE_INO) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    fill(ino, &st);
    fuse_reply_attr(req, &st, 3600.0);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (ino != FILE_INO) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    fi->direct_io = 1;
    fi->nonseekable = 1;
    fuse_reply_open(req, fi);
}

static void ll_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg,
                     struct fuse_file_info *fi, unsigned flags, const void *in_buf,
                     size_t in_bufsz, size_t out_bufsz)
{
    (void)ino; (void)arg; (void)fi; (void)flags; (void)in_buf; (void)in_bufsz; (void)out_bufsz;
    if (cmd == IOMMUFS_NULL)
        fuse_reply_ioctl(req, 0, NULL, 0);
    else
        fuse_reply_err(req, ENOTTY);
}

static const struct fuse_lowlevel_ops ops = {
    .lookup = ll_lookup,
    .getattr = ll_getattr,
    .open = ll_open,
    .ioctl = ll_ioctl,
};

int main(int argc, char **argv)
{
    char *fargv[] = {argv[0], "-o",
                     "allow_other,default_permissions,auto_unmount,fsname=nullsrv,subtype=nullsrv",
                     NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
    struct fuse_session *se;
    int rc = 1;

    if (argc != 2) {
        fprintf(stderr, "usage: %s MOUNTPOINT\n", argv[0]);
        return 2;
    }
    se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
    if (!se)
        return 1;
    if (fuse_set_signal_handlers(se) == 0) {
        if (fuse_session_mount(se, argv[1]) == 0) {
            rc = fuse_session_loop(se) ? 1 : 0;
            fuse_session_unmount(se);
        }
        fuse_remove_signal_handlers(se);
    }
    fuse_session_destroy(se);
    return rc;
}
