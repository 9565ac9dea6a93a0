/* A VMM's KVM step before BIND: add a VFIO device fd to the VM's
 * KVM_DEV_TYPE_VFIO device, as QEMU does with KVM (reference vfio-device.md
 * §11). Prints one line per call, "NAME rc errno", and "skip ..." when this
 * machine has no usable KVM.
 *
 *   run_kvm_vfio /dev/vfio/devices/vfioN */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* Older headers name these after groups only; the numbers are the same. */
#ifndef KVM_DEV_VFIO_FILE
#define KVM_DEV_VFIO_FILE KVM_DEV_VFIO_GROUP
#define KVM_DEV_VFIO_FILE_ADD KVM_DEV_VFIO_GROUP_ADD
#define KVM_DEV_VFIO_FILE_DEL KVM_DEV_VFIO_GROUP_DEL
#endif

static int attr(int dev, __u64 which, int fd)
{
    __s32 v = fd;
    struct kvm_device_attr a = { .group = KVM_DEV_VFIO_FILE, .attr = which,
                                 .addr = (__u64)(unsigned long)&v };
    return ioctl(dev, KVM_SET_DEVICE_ATTR, &a) < 0 ? errno : 0;
}

int main(int argc, char **argv)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    int vm = kvm < 0 ? -1 : ioctl(kvm, KVM_CREATE_VM, 0);
    struct kvm_create_device cd = { .type = KVM_DEV_TYPE_VFIO };
    if (vm < 0 || ioctl(vm, KVM_CREATE_DEVICE, &cd) < 0) {
        printf("skip no KVM VFIO device: %d\n", errno);
        return 0;
    }
    int vfio = open(argv[1], O_RDWR | O_CLOEXEC);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (vfio < 0 || null < 0) {
        perror("open");
        return 1;
    }
    printf("add %d\n", attr(cd.fd, KVM_DEV_VFIO_FILE_ADD, vfio));
    printf("add_again %d\n", attr(cd.fd, KVM_DEV_VFIO_FILE_ADD, vfio));
    printf("del %d\n", attr(cd.fd, KVM_DEV_VFIO_FILE_DEL, vfio));
    printf("del_again %d\n", attr(cd.fd, KVM_DEV_VFIO_FILE_DEL, vfio));
    printf("add_not_vfio %d\n", attr(cd.fd, KVM_DEV_VFIO_FILE_ADD, null));
    printf("add_bad_fd %d\n", attr(cd.fd, KVM_DEV_VFIO_FILE_ADD, 1000));
    return 0;
}
