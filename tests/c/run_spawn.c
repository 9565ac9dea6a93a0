/* Other processes holding /dev/iommu open files: a posix_spawn'ed or
 * vfork+exec'ed program inheriting the fd, and an fd passed with SCM_RIGHTS,
 * keep the context alive after this process closes its fd; close_range()
 * closes tracked fds like close(). Prints "ok ..." per check.
 *
 *   run_spawn                  (the checks)
 *   run_spawn child FD PIPEFD  (a spawned program: waits for a byte on
 *                               PIPEFD, then IOAS_ALLOC on FD must give 2) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "util.h"

extern char **environ;

static uint32_t ioas_alloc(int fd, const char *what)
{
    struct iommu_ioas_alloc al = { sizeof(al), 0, 0 };
    check_ok(what, ioctl(fd, IOMMU_IOAS_ALLOC, &al));
    return al.out_ioas_id;
}

/* The context of fd outlives our close: a child started by how() uses it. */
static void inherited(const char *self, const char *how)
{
    int fd = open("/dev/iommu", O_RDWR);        /* inheritable */
    if (fd < 0)
        fail("open", -errno, 0);
    ioas_alloc(fd, "alloc");
    int p[2];
    if (pipe(p))
        fail("pipe", -errno, 0);
    char fds[16], ps[16];
    snprintf(fds, sizeof(fds), "%d", fd);
    snprintf(ps, sizeof(ps), "%d", p[0]);
    char *argv[] = { (char *)self, "child", fds, ps, NULL };
    pid_t pid;
    fflush(stdout);
    if (!strcmp(how, "posix_spawn")) {
        if (posix_spawn(&pid, self, NULL, NULL, argv, environ))
            fail("posix_spawn", -errno, 0);
    } else {
        pid = vfork();
        if (pid == 0) {
            execve(self, argv, environ);
            _exit(127);
        }
    }
    close(p[0]);
    close(fd);                                  /* the child still holds it */
    if (write(p[1], "x", 1) != 1)
        fail("write", -errno, 1);
    close(p[1]);
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status))
        fail(how, status, 0);
    printf("ok %s child uses the file after our close\n", how);
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "child")) {
        char c;
        if (read(atoi(argv[3]), &c, 1) != 1)
            return 3;
        return ioas_alloc(atoi(argv[2]), "child alloc") == 2 ? 0 : 1;
    }
    inherited(argv[0], "posix_spawn");
    inherited(argv[0], "vfork");

    /* an O_CLOEXEC fd does not reach system()'s shell: still ours alone */
    int fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
    ioas_alloc(fd, "alloc");
    fflush(stdout);
    if (system("true") != 0)
        fail("system", -errno, 0);
    close(fd);
    printf("ok system\n");

    /* SCM_RIGHTS to ourselves: the received fd keeps the context */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
        fail("socketpair", -errno, 0);
    fd = open("/dev/iommu", O_RDWR);
    ioas_alloc(fd, "alloc");
    char byte = 'x';
    struct iovec iov = { &byte, 1 };
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
    memset(&u, 0, sizeof(u));
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof(u.buf);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    if (sendmsg(sv[0], &msg, 0) != 1)
        fail("sendmsg", -errno, 1);
    close(fd);
    memset(&u, 0, sizeof(u));
    msg.msg_controllen = sizeof(u.buf);
    if (recvmsg(sv[1], &msg, 0) != 1)
        fail("recvmsg", -errno, 1);
    int got;
    memcpy(&got, CMSG_DATA(CMSG_FIRSTHDR(&msg)), sizeof(int));
    if (ioas_alloc(got, "alloc via received fd") != 2)
        fail("received fd's context", 0, 2);
    printf("ok SCM_RIGHTS receiver uses the file after our close\n");
    close(got);
    close(sv[0]);
    close(sv[1]);

    /* close_range over two tracked fds */
    int a = open("/dev/iommu", O_RDWR), b = open("/dev/iommu", O_RDWR);
    ioas_alloc(a, "alloc a");
    ioas_alloc(b, "alloc b");
    int lo = a < b ? a : b, hi = a < b ? b : a;
    if (close_range((unsigned)lo, (unsigned)hi, 0))
        fail("close_range", -errno, 0);
    if (fcntl(a, F_GETFD) != -1 || fcntl(b, F_GETFD) != -1)
        fail("closed by close_range", 0, 1);
    printf("ok close_range\n");
    printf("done\n");
    return 0;
}
