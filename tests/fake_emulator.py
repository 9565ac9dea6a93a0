"""A fake core.emulator.Emulator for transport tests (the same node table
and file protocol, core.files).

It lets tests see exactly what the transport hands to core, with nothing of
core's rules in the way. Commands (on ``iommu`` and VFIO nodes), all ``_IO``
numbers of type 0x3b like the real ones; every struct starts with a u32 size:

- FAKE_DOUBLE   {u32 size, u32 pad, u64 in, u64 out}: out = in*2+1, returns 0;
  EINVAL if size < 24.
- FAKE_WHO      {u32 size, u32 tid, u32 uid, u32 gid, u32 tgid, u32 ctx,
  u32 fds_n, s32 fd_err}: the caller as core sees it; ``ctx`` is the context
  id; returns 7.
- FAKE_ERRNO    {u32 size, u32 err}: raises UapiError(err).
- FAKE_SUM      {u32 size, u32 len, u64 ptr, u64 sum}: sum of ``len`` bytes
  at ``ptr`` in the caller's memory (a pointer field), returns 0.
- FAKE_BLOCK    blocks (the deferred path: raises a core.files.Wait)
  until FAKE_UNBLOCK, then returns 42. This is the test-only
  deferred path of the transport tests.
- FAKE_UNBLOCK  releases every FAKE_BLOCK waiter; returns 0.
- FAKE_CRASH    raises RuntimeError (the transport must answer EIO and live on).
- FAKE_CLOSED   {u32 size, u32 ctx_id, u32 closed}: whether context
  ``ctx_id`` was closed (and how many times close_* ran), returns 0.
- VFIO_DEVICE_BIND_IOMMUFD (0x3b76) on a VFIO node: {u32 argsz, u32 flags,
  s32 iommufd, u32 out_devid}: out_devid = id of the context behind
  ``iommufd`` (via Caller.fd: EBADF / EBADFD as resolved by devfs).

``dma`` frames are echoed: reply = b"IODM" + status 0 + len + the request.
"""
import errno
import json
import os
import struct
import threading

from core.errors import UapiError
from core.files import (IOCTL_FRAMES, REQUEST_FRAMES, TRANSPORT_IOCTLS, Dir, File, InfoFile,
                        Opener, Wait)


def _io(nr):
    return (0x3B << 8) | nr


FAKE_DOUBLE = _io(0xC0)
FAKE_WHO = _io(0xC1)
FAKE_ERRNO = _io(0xC2)
FAKE_SUM = _io(0xC3)
FAKE_BLOCK = _io(0xC4)
FAKE_UNBLOCK = _io(0xC5)
FAKE_CRASH = _io(0xC6)
FAKE_CLOSED = _io(0xC7)
BIND = 0x3B76


class WouldBlock(Wait):
    """What a core call raises to say "retry when ``fd`` is readable"."""


class Device:
    def __init__(self, name, vfio):
        self.name = name
        self.vfio = vfio


class Ctx:
    def __init__(self, cid, uid):
        self.id = cid
        self.uid = uid
        self.closes = 0


class IommuFile(File):
    frames = IOCTL_FRAMES
    transport_ioctls = TRANSPORT_IOCTLS

    def __init__(self, emu, ctx):
        self.emu = emu
        self.ctx = ctx

    def ioctl(self, caller, cmd, arg):
        return self.emu.iommufd_ioctl(self.ctx, caller, cmd, arg)

    def release(self):
        self.emu._enter()
        self.ctx.closes += 1
        self.emu._leave()

    def fget(self):
        return self.ctx


class VFile(File):
    frames = IOCTL_FRAMES
    transport_ioctls = TRANSPORT_IOCTLS

    def __init__(self, emu, device, uid):
        self.emu = emu
        self.device = device
        self.uid = uid
        self.closes = 0
        self.bound = None

    def ioctl(self, caller, cmd, arg):
        return self.emu.vfio_ioctl(self, caller, cmd, arg)

    def release(self):
        self.closes += 1


class Port(File):
    frames = REQUEST_FRAMES

    def __init__(self, emu, device):
        self.emu = emu
        self.device = device

    def request(self, caller, data):
        return self.emu.dma(self.device, caller, data)

    @staticmethod
    def failure(err):
        return b"IODM" + struct.pack("<iIIQ", -err, 0, 0, 0)


class FakeEmulator:
    """See the module docstring. ``topology`` is ignored."""

    def __init__(self, topology=None):
        self.devices = {"vfio0": Device("0000:00:03.0", "vfio0"),
                        "vfio1": Device("0000:00:04.0", "vfio1"),
                        "vfio10": Device("mdev0", "vfio10")}
        self.contexts = {}
        self.next_id = 1
        self.block_r, self.block_w = os.pipe()
        self.unblocked = False
        self.thread_ids = set()     # the threads that entered core (must hold the lock)
        self.inside = 0
        self.overlaps = 0
        self.guard = threading.Lock()

    # every method is wrapped to check that core is never entered twice at once
    def _enter(self):
        with self.guard:
            self.inside += 1
            if self.inside > 1:
                self.overlaps += 1
            self.thread_ids.add(threading.get_native_id())

    def _leave(self):
        with self.guard:
            self.inside -= 1

    def nodes(self):
        out = [("iommu", Opener(self._open_iommufd, Ctx)),
               ("vfio", Dir()), ("vfio/devices", Dir()), ("devices", Dir()), ("fds", Dir())]
        out += [(f"vfio/devices/{n}", Opener(lambda c, f, d=d: VFile(self, d, c.uid), VFile))
                for n, d in self.devices.items()]
        for d in sorted(self.devices.values(), key=lambda d: d.name):
            out += [(f"devices/{d.name}", Dir()),
                    (f"devices/{d.name}/dma", Opener(lambda c, f, d=d: Port(self, d), Port)),
                    (f"devices/{d.name}/info", Opener(lambda c, f, d=d: self._open_info(d, f),
                                                      InfoFile, 0o444)),
                    (f"devices/{d.name}/driver", Opener(self._no_driver, File))]
        return out

    def open(self, node, caller, flags=os.O_RDWR):
        return node.open(caller, flags)

    def _open_info(self, device, flags):
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise UapiError(errno.EACCES, "info is read-only")
        self._enter()
        try:
            return InfoFile(json.dumps({"name": device.name, "vfio": device.vfio}).encode())
        finally:
            self._leave()

    def _no_driver(self, caller, flags):
        raise UapiError(errno.ENODEV, "the fake has no driver side")

    def _open_iommufd(self, caller, flags):
        self._enter()
        try:
            ctx = Ctx(self.next_id, caller.uid)
            self.next_id += 1
            self.contexts[ctx.id] = ctx
            return IommuFile(self, ctx)
        finally:
            self._leave()

    def iommufd_ioctl(self, ctx, caller, cmd, arg):
        self._enter()
        try:
            if caller.uid != ctx.uid:
                raise UapiError(errno.EACCES, "other uid")
            return self._common(ctx, caller, cmd, arg)
        finally:
            self._leave()

    def vfio_ioctl(self, vfile, caller, cmd, arg):
        self._enter()
        try:
            if caller.uid != vfile.uid:
                raise UapiError(errno.EACCES, "other uid")
            if cmd == BIND:
                argsz, flags, fd = struct.unpack("<IIi", arg.read(0, 12))
                ctx = caller.fd(fd, Ctx)
                vfile.bound = ctx
                arg.write(12, struct.pack("<I", ctx.id))
                return 0
            return self._common(None, caller, cmd, arg)
        finally:
            self._leave()

    def _common(self, ctx, caller, cmd, arg):
        size = struct.unpack("<I", arg.read(0, 4))[0] if cmd not in (FAKE_BLOCK, FAKE_UNBLOCK, FAKE_CRASH) else 0
        if cmd == FAKE_DOUBLE:
            if size < 24:
                raise UapiError(errno.EINVAL, "size")
            (v,) = struct.unpack("<Q", arg.read(8, 8))
            arg.write(16, struct.pack("<Q", (v * 2 + 1) & (2 ** 64 - 1)))
            return 0
        if cmd == FAKE_WHO:
            fd_err = 0
            for v in caller.fds.values():
                fd_err = v if isinstance(v, int) else -v.id
            arg.write(4, struct.pack("<IIIIIIi", caller.tid, caller.uid, caller.gid, caller.tgid,
                                     ctx.id if ctx else 0, len(caller.fds), fd_err))
            return 7
        if cmd == FAKE_ERRNO:
            raise UapiError(struct.unpack("<I", arg.read(4, 4))[0], "asked")
        if cmd == FAKE_SUM:
            n, ptr = struct.unpack("<IQ", arg.read(4, 12))
            data = caller.mem.read(ptr, n)
            arg.write(16, struct.pack("<Q", sum(data)))
            return 0
        if cmd == FAKE_BLOCK:
            if not self.unblocked:
                raise WouldBlock(self.block_r)
            return 42
        if cmd == FAKE_UNBLOCK:
            if not self.unblocked:
                self.unblocked = True
                os.write(self.block_w, b"x")   # never drained: every waiter retries
            return 0
        if cmd == FAKE_CRASH:
            raise RuntimeError("a bug in core")
        if cmd == FAKE_CLOSED:
            (cid,) = struct.unpack("<I", arg.read(4, 4))
            c = self.contexts.get(cid)
            arg.write(8, struct.pack("<I", c.closes if c else 0xFFFFFFFF))
            return 0
        raise UapiError(errno.ENOTTY, f"{cmd:#x}")

    def dma(self, device, caller, request):
        self._enter()
        try:
            return b"IODM" + struct.pack("<iI", 0, len(request)) + bytes(request)
        finally:
            self._leave()

    def shutdown(self):
        pass
