/* Several threads issuing ioctls on one /dev/iommu fd at once: each thread
 * allocates IOASes, maps and unmaps its own buffer in them and destroys
 * them. Every call must succeed, concurrently allocated IDs must be
 * distinct, and at the end nothing is left (the next IOAS is ID 1 again).
 * Meanwhile each thread also opens, dups and closes contexts of its own.
 *
 *   run_threads THREADS ITERATIONS */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "util.h"

static int iommufd;
static int iterations;
static uint32_t seen[64][256];

static void *worker(void *p)
{
    long t = (long)p;
    unsigned char *buf = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(buf, (int)t, 65536);
    for (int i = 0; i < iterations; i++) {
        struct iommu_ioas_alloc al = { sizeof(al), 0, 0 };
        check_ok("IOAS_ALLOC", ioctl(iommufd, IOMMU_IOAS_ALLOC, &al));
        seen[t][i] = al.out_ioas_id;
        struct iommu_ioas_map m = { sizeof(m), IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
                                    al.out_ioas_id, 0, (uintptr_t)buf, 65536, 0 };
        check_ok("MAP", ioctl(iommufd, IOMMU_IOAS_MAP, &m));
        struct iommu_ioas_unmap u = { sizeof(u), al.out_ioas_id, m.iova, 65536 };
        check_ok("UNMAP", ioctl(iommufd, IOMMU_IOAS_UNMAP, &u));
        if (u.length != 65536)
            fail("unmapped length", (long)u.length, 65536);
        /* A context of this thread's own, used through a dup. */
        int own = open("/dev/iommu", O_RDWR);
        if (own < 0)
            fail("open own", -errno, 0);
        struct iommu_ioas_alloc oa = { sizeof(oa), 0, 0 };
        check_ok("own IOAS_ALLOC", ioctl(own, IOMMU_IOAS_ALLOC, &oa));
        int again = dup(own);
        close(own);
        check_ok("own IOAS_ALLOC via dup", ioctl(again, IOMMU_IOAS_ALLOC, &oa));
        if (oa.out_ioas_id != 2)
            fail("own context through the dup", oa.out_ioas_id, 2);
        close(again);
        /* Keep this thread's last IOAS so IDs of live objects overlap in time. */
        if (i + 1 < iterations) {
            struct iommu_destroy d = { sizeof(d), al.out_ioas_id };
            check_ok("DESTROY", ioctl(iommufd, IOMMU_DESTROY, &d));
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    iterations = argc > 2 ? atoi(argv[2]) : 50;
    if (threads > 64 || iterations > 256)
        fail("too many", threads, 64);
    iommufd = open("/dev/iommu", O_RDWR);
    if (iommufd < 0)
        fail("open /dev/iommu", -errno, 0);
    pthread_t th[64];
    for (long t = 0; t < threads; t++)
        pthread_create(&th[t], NULL, worker, (void *)t);
    for (int t = 0; t < threads; t++)
        pthread_join(th[t], NULL);
    printf("ok %d threads x %d iterations\n", threads, iterations);
    /* The last IOAS of each thread is still alive: their IDs are distinct. */
    for (int a = 0; a < threads; a++)
        for (int b = a + 1; b < threads; b++)
            if (seen[a][iterations - 1] == seen[b][iterations - 1])
                fail("live IOAS ids distinct", seen[a][iterations - 1], 0);
    printf("ok live ids distinct\n");
    for (int t = 0; t < threads; t++) {
        struct iommu_destroy d = { sizeof(d), seen[t][iterations - 1] };
        check_ok("DESTROY last", ioctl(iommufd, IOMMU_DESTROY, &d));
    }
    struct iommu_ioas_alloc al = { sizeof(al), 0, 0 };
    check_ok("IOAS_ALLOC after", ioctl(iommufd, IOMMU_IOAS_ALLOC, &al));
    if (al.out_ioas_id != 1)
        fail("nothing left: next id", al.out_ioas_id, 1);
    printf("ok nothing left\n");
    printf("done\n");
    return 0;
}
