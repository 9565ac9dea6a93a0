"""Pinned memory outliving its process (issue 11, fork_gone): a child maps
MAP_SHARED memory into an IOAS with a domain and exits; as the kernel keeps
the pinned pages, the emulator keeps reaching them, through an in-kernel
access and through device DMA, by holding the shared object from pin time
(/proc/PID/map_files) and adopting it into its own mapping when the
process is gone. Private memory has no such object: EFAULT."""
import errno
import mmap
import os
import struct

import pytest

from core import uapi
from core.caller import Caller
from core.errors import UapiError
from core.mm.usermem import MemArg
from core.wire import IODM_REQUEST as REQ

from corekit import addr, dma_request, new
from test_core_selftest import ST
from test_core_map_file import addr_of

PLAIN = "0000:00:03.0"
PAGE = 4096
IOVA = 0x400000


@pytest.fixture
def st():
    k = ST()
    yield k
    k.close()


def map_in_child(st, ioas, flags):
    """A child maps a fresh mapping of 4 pages (``flags``) at IOVA, then
    exits; returns the parent's view of that mapping."""
    buf = mmap.mmap(-1, 4 * PAGE, flags)
    c = new("iommu_ioas_map", flags=uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_READABLE
            | uapi.IOMMU_IOAS_MAP_WRITEABLE, ioas_id=ioas, user_va=addr_of(buf),
            length=4 * PAGE, iova=IOVA)
    buf[0:5] = b"early"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(r, 1)
        os._exit(0)
    try:
        caller = Caller(pid, st.caller.uid, st.caller.gid)
        st.iommufd.ioctl(caller, uapi.IOMMU_IOAS_MAP, MemArg(caller.mem, addr(c)))
    finally:
        os.write(w, b"x")
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    return buf


def test_shared_memory_of_an_exited_process_stays_reachable(st):
    ioas = st.ioas()
    vf, dev = st.bind(PLAIN)
    st.attach(vf, ioas)
    afile = st.create_access(ioas, flags=0)
    buf = map_in_child(st, ioas, mmap.MAP_SHARED)
    buf[PAGE:PAGE + 4] = b"late"                   # the same pages: written after the exit
    out = bytearray(8)
    st.access_rw(afile, IOVA, addr_of_bytes(out), 5)
    assert bytes(out[:5]) == b"early"
    st.access_rw(afile, IOVA + PAGE, addr_of_bytes(out), 4)
    assert bytes(out[:4]) == b"late"
    rep = dma_request(st.emu, st.emu.devices[PLAIN], st.caller,
                      REQ.pack(b"IODM", 2, 0, 0, IOVA + 2 * PAGE, 3, 0) + b"dev")
    assert struct.unpack_from("<i", rep, 4)[0] == 0
    assert buf[2 * PAGE:2 * PAGE + 3] == b"dev"
    afile.close()
    buf.close()


def test_private_memory_of_an_exited_process_is_gone(st):
    ioas = st.ioas()
    vf, dev = st.bind(PLAIN)
    st.attach(vf, ioas)
    afile = st.create_access(ioas, flags=0)
    buf = map_in_child(st, ioas, mmap.MAP_PRIVATE)
    out = bytearray(8)
    with pytest.raises(UapiError) as e:
        st.access_rw(afile, IOVA, addr_of_bytes(out), 5)
    assert e.value.errno == errno.EFAULT
    rep = dma_request(st.emu, st.emu.devices[PLAIN], st.caller,
                      REQ.pack(b"IODM", 1, 0, 0, IOVA, 4, 0))
    assert struct.unpack_from("<i", rep, 4)[0] == -errno.EFAULT
    afile.close()
    buf.close()


def addr_of_bytes(b):
    from core.uapi import ffi
    return int(ffi.cast("uintptr_t", ffi.from_buffer(b)))
