"""The machinery of an ioctl table: one slot (:class:`Op`), the generic
rules every slot obeys, copy_struct_from_user and the write-back.

A leaf module, the kernel's ``iommufd_ucmd`` helpers: handler modules import
it to declare their ops (:func:`ioctl`), and the table that lists those ops
(core.iommufd.dispatch) imports the handler modules, so no handler imports the table.

Reference §3 ("Generic dispatch rules"), in the kernel's order:

1. ``nr < 0x80`` or past the table: the VFIO type1 compatibility handler
   (ENOTTY for what it does not know, without touching the argument);
2. read the leading ``size`` u32: EFAULT if unreadable;
3. the slot's full command differs from ``cmd`` (or the slot is empty): ENOTTY;
4. ``size`` below the op's minimum (offsetofend of its last mandatory field):
   EINVAL;
5. copy_struct_from_user: a short struct is zero-filled; bytes between the
   kernel's sizeof and ``size`` must be zero, else E2BIG;
6. run the handler; write back ``min(size, sizeof)`` bytes of the struct;
7. objects created by the handler are published only when everything
   succeeded, and destroyed otherwise.

Steps 2-6 are :func:`decode` and :func:`respond` here; 1 and 7 belong to the
iommufd table (core.iommufd.dispatch). Handlers receive ``(ctx, caller, cmd)`` where
``cmd`` is the decoded cffi struct, and return the ioctl result (normally 0)
or raise UapiError.
"""
import errno

from ..errors import UapiError
from ..uapi import ffi

# Every struct of a table starts with its u32 ``size`` (checked by Op).
_U32 = ffi.typeof("uint32_t")
_SIZE_WORD = ffi.typeof("uint32_t *")


class Op:
    """One table slot: full command, struct type, minimum size, handler.

    ``respond``: "struct" writes back min(size, sizeof) bytes after success;
    a callable ``respond(arg, cdata, size)`` does the write-back itself.
    """

    __slots__ = ("cmd", "ctype", "sizeof", "min_size", "handler", "respond")

    def __init__(self, cmd, struct, last, handler, respond):
        self.cmd = cmd
        self.ctype = ffi.typeof(f"struct {struct} *")
        self.sizeof = ffi.sizeof(f"struct {struct}")
        fields = ffi.typeof(f"struct {struct}").fields
        name, first = fields[0]
        # Step 2 reads every struct's leading u32 ``size`` by that name.
        assert name == "size" and first.offset == 0 and first.type == _U32, struct
        field = dict(fields)[last]
        self.min_size = field.offset + ffi.sizeof(field.type)
        self.handler = handler
        self.respond = respond


def ioctl(cmd, struct, last, respond="struct"):
    """Declare the decorated function the handler of ``cmd`` with ``struct
    <struct>``: it gets an ``op`` attribute (an :class:`Op`) that a table
    lists. ``last`` names the last mandatory field: the minimum size is its
    offsetofend (reference §2 table, "min")."""

    def declare(handler):
        handler.op = Op(cmd, struct, last, handler, respond)
        return handler

    return declare


def read_struct(arg, ctype, kernel_size, user_size, cdata=None, got=0):
    """copy_struct_from_user: ``user_size`` bytes of the argument into a cffi
    struct of ``kernel_size`` bytes. Short: zero-filled. Long: the tail
    must be zero (E2BIG). Unreadable: EFAULT.

    ``cdata``/``got``: a struct (``ctype``) already holding the first ``got``
    readable bytes of the argument, as :func:`decode` reads it (saves a
    copy); by default a new one is read.
    """
    if cdata is None:
        cdata = ffi.new(ctype)
        got = 0
    n = min(user_size, kernel_size)
    if got < n:
        got = arg.read_into(0, cdata, n)
        if got < n:
            raise UapiError(errno.EFAULT, f"struct unreadable after {got} of {n} bytes")
    if got > n:
        # Bytes the caller's size leaves out are the kernel's zero fill.
        ffi.buffer(cdata)[n:got] = bytes(got - n)
    if user_size > kernel_size:
        # check_zeroed_user: the tail is read in bounded chunks (size is a
        # u32 chosen by the caller), stopping at the first non-zero byte.
        off = kernel_size
        while off < user_size:
            k = min(1 << 16, user_size - off)
            if any(arg.read(off, k)):
                raise UapiError(errno.E2BIG, "non-zero bytes past the kernel struct")
            off += k
    return cdata


def copy_from_user(arg, struct, minsz):
    """The first ``minsz`` bytes of the argument in a zeroed ``struct
    <struct>`` (EFAULT if unreadable), as VFIO's handlers read their
    ``argsz``-prefixed structs: no size rule here, each handler has its own."""
    data = arg.read(0, minsz)
    cdata = ffi.new(f"struct {struct} *")
    ffi.memmove(cdata, data, minsz)
    return cdata


def write_struct(arg, cdata, kernel_size, user_size):
    """iommufd_ucmd_respond: write back min(user_size, kernel_size) bytes."""
    arg.write_from(0, cdata, min(user_size, kernel_size))


def decode(op, cmd, arg):
    """Steps 2-5 of the generic rules for ``op`` (None: an empty slot):
    returns ``(cdata, size)``. EFAULT unreadable size; ENOTTY empty slot or
    another full command; EINVAL below the minimum; E2BIG non-zero tail."""
    # One copy for the size word and the struct, straight into the struct:
    # only the bytes the kernel would read are looked at, and a fault past
    # them does not count.
    cdata = ffi.new(op.ctype if op is not None else _SIZE_WORD)
    got = arg.read_into(0, cdata, op.sizeof if op is not None else 4)
    if got < 4:
        raise UapiError(errno.EFAULT, "size unreadable")
    size = cdata.size if op is not None else cdata[0]
    if op is None or op.cmd != cmd:
        raise UapiError(errno.ENOTTY, f"no ioctl {cmd:#x}")
    if size < op.min_size:
        raise UapiError(errno.EINVAL, f"size {size} < {op.min_size}")
    return read_struct(arg, op.ctype, op.sizeof, size, cdata, got), size


def respond(op, arg, cdata, size):
    """Step 6: the write-back of a successful call."""
    if op.respond == "struct":
        write_struct(arg, cdata, op.sizeof, size)
    elif op.respond is not None:
        op.respond(arg, cdata, size)


class Table:
    """A dispatch table of project-private commands (``_IO(0xF5, nr)``) on
    another node, with the same generic rules (steps 2-6) as the iommufd
    table: see :func:`decode`. ``register`` declares and lists a handler
    at once (these tables live beside their handlers: nothing imports them
    but their own node's file)."""

    def __init__(self):
        self.ops = {}

    def register(self, cmd, struct, last, respond="struct"):
        def reg(handler):
            self.ops[cmd] = Op(cmd, struct, last, handler, respond)
            return handler
        return reg

    def call(self, target, caller, cmd, arg):
        """Run ``cmd`` on ``target``: the handler's result (0 if None) or
        UapiError (ENOTTY for a command not in the table, after the size
        word was read like an empty slot of the iommufd table)."""
        op = self.ops.get(cmd)
        cdata, size = decode(op, cmd, arg)
        result = op.handler(target, caller, cdata)
        respond(op, arg, cdata, size)
        return result or 0


def respond_anyway(err, detail=""):
    """A UapiError after which the dispatcher still writes the struct back."""
    e = UapiError(err, detail)
    e.respond = True
    return e
