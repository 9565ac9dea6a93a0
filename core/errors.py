"""The exceptions of core: a uAPI failure (it carries the errno) and a DMA
that cannot complete (the errno and the faulting IOVA).

Every handler failure is ``UapiError(errno)``; the transport turns it into the
ioctl()'s -1/errno, a frame's negative result, or a DMA status.
"""
import errno as _errno


class UapiError(Exception):
    """A uAPI call failed with ``errno`` (a positive errno value, e.g. errno.ENOENT).

    ``detail`` is free text for logs and debugging; the client sees only the errno.
    """

    def __init__(self, err, detail=""):
        super().__init__(err, detail or _errno.errorcode.get(err, str(err)))
        self.errno = err
        self.detail = detail

    def __repr__(self):
        return f"UapiError({_errno.errorcode.get(self.errno, self.errno)}, {self.detail!r})"


class DmaFault(Exception):
    """A DMA that cannot complete: ``errno`` (EFAULT no translation, EACCES
    permission, ENODEV not attached) and the first faulting ``iova``."""

    def __init__(self, err, iova):
        super().__init__(err, iova)
        self.errno = err
        self.iova = iova
