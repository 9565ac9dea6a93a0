/* Transport test client (tests/test_transport.py): blocking calls and
 * signals, which Python would hide.
 *
 *   transport_client block PATH [sigint]      ioctl(FAKE_BLOCK); prints "result R errno E"
 *   transport_client frameblock PATH [sigint] the same request as a frame write()
 *   transport_client null PATH N              N IOMMUFS_NULL ioctls
 *
 * With "sigint", a SIGINT handler is installed without SA_RESTART, so an
 * interrupted call returns -1/EINTR. "blocking" is printed just before the
 * call blocks.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "uapi.h"

/* tests/fake_emulator.py: a command that blocks until FAKE_UNBLOCK. */
#define FAKE_BLOCK IOMMUFD_IO(0xC4)

static void on_sigint(int sig) { (void)sig; }

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    const char *mode = argv[1];
    int fd = open(argv[2], O_RDWR);
    if (fd < 0) {
        perror("open");
        return 1;
    }
    if (argc > 3 && strcmp(argv[3], "sigint") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_sigint;
        sigaction(SIGINT, &sa, NULL);
    }
    if (strcmp(mode, "null") == 0) {
        long n = argc > 3 ? atol(argv[3]) : 1;
        for (long i = 0; i < n; i++)
            if (ioctl(fd, IOMMUFS_NULL, 0) != 0) {
                perror("ioctl");
                return 1;
            }
        printf("ok\n");
        return 0;
    }
    long r;
    printf("blocking\n");
    fflush(stdout);
    if (strcmp(mode, "block") == 0) {
        r = ioctl(fd, FAKE_BLOCK, 0);
    } else {
        struct iommufs_frame_request req = { "IOFS", FAKE_BLOCK, 0, 0 };
        r = write(fd, &req, sizeof(req));
        if (r == (long)sizeof(req)) {
            unsigned char rep[64];
            r = read(fd, rep, sizeof(rep));
            if (r >= (long)sizeof(struct iommufs_frame_reply)) {
                struct iommufs_frame_reply hdr;
                memcpy(&hdr, rep, sizeof(hdr));
                r = hdr.result;
            }
        }
    }
    printf("result %ld errno %d\n", r, r < 0 ? errno : 0);
    return 0;
}
