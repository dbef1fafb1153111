"""The pool wire format: length-prefixed msgpack frames.

Standard library + msgpack only (imported by worker processes).

A frame is a 4-byte big-endian body length followed by one msgpack value, always an
array whose first item is the message kind (the constants below). Bodies larger than
the receiver's ``max_frame`` (default 64 MiB) are refused before they are buffered.

Types that survive the trip (packed with ``strict_types`` so nothing is silently
widened): None, bool, int (any size: beyond 64 bits as an ext), float, str,
bytes, list, dict (any hashable key: ints stay ints), and as msgpack ext types
tuple, set and frozenset. bytearray/memoryview arrive as bytes. Subclasses of
the builtins (an IntEnum, a dict subclass) arrive as their builtin base. Any other
object is refused with TypeError, unless the pool opts in with
``allow_pickle=True``, which sends it pickled (ext type 5).
"""

from __future__ import annotations

import pickle
import struct
import threading
from collections.abc import Callable
from typing import Any

import msgpack

__all__ = [
    "DEFAULT_MAX_FRAME",
    "Codec",
    "FrameError",
    "FrameReader",
]

DEFAULT_MAX_FRAME = 64 * 1024 * 1024
RECV_SIZE = 256 * 1024
HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size

# host -> worker
CALL = 0  # [CALL, rid, handler, args(list), kwargs(dict), session, flags]
CANCEL = 1  # [CANCEL, rid]
CB_REPLY = 2  # [CB_REPLY, cbid, ok(bool), value | [type, message, traceback]]
DROP = 3  # [DROP, session]
STOP = 4  # [STOP]
CREDIT = 5  # [CREDIT, rid, n]: the stream's consumer took n chunks; n more may come
# worker -> host
READY = 10  # [READY, pid, info]
RESULT = 11  # [RESULT, rid, value]
ERROR = 12  # [ERROR, rid, code, type, message, traceback, detail?]; detail: dict | None (see below)
CHUNK = 13  # [CHUNK, rid, value]
EVENT = 14  # [EVENT, rid, event]
CALLBACK = 15  # [CALLBACK, rid, cbid, name, args, kwargs]
LIMIT = 16  # [LIMIT, what, value]: the worker passed a limit ("max_rss_mb"); route no more calls to it
# host <-> template (zygote), over a SOCK_SEQPACKET control socket, no length prefix
Z_FORK = 20  # [Z_FORK, token] + fds (worker socket, stderr write end)
Z_KILL = 21  # [Z_KILL, pid, signal]
Z_READY = 30  # [Z_READY, pid, info]
Z_FORKED = 31  # [Z_FORKED, token, pid]
Z_EXIT = 32  # [Z_EXIT, pid, exitcode | None, signal | None]
Z_FAIL = 33  # [Z_FAIL, token, message]

# A streaming call may have this many chunks sent but not yet consumed (flow control:
# a slow consumer holds the producer instead of buffering without bound).
STREAM_WINDOW = 64

# CALL flags
F_EVENTS = 1  # the caller has on_event: send progress events
F_STREAM = 2  # the caller streams: send chunks as they come

# ERROR codes. A handler's exception may carry ``wire_code: str`` and ``wire_detail: dict``
# (msgpack-able); the worker sends them as the optional 7th element ``{"code": ..., **detail}``
# and the host exposes them as ``RemoteError.code`` / ``RemoteError.detail``, so errors are
# recognised by code, never by parsing message text.
E_REMOTE = 0  # the handler raised
E_NOT_FOUND = 1  # no such handler
E_CANCELLED = 2  # cancelled at the host's request
E_ENCODE = 3  # the result could not be encoded (type, or over max_frame)

# ext type codes
EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
EXT_BIGINT = 4
EXT_PICKLE = 5


class FrameError(Exception):
    """A frame was oversized or malformed (the host turns it into ProtocolError)."""


class Codec:
    """Packs and unpacks message bodies. Thread-safe (one Packer per thread)."""

    def __init__(self, allow_pickle: bool = False, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.allow_pickle = allow_pickle
        self.max_frame = max_frame
        self._local = threading.local()
        self._ext_packb: Callable[[Any], bytes] = self._new_packer(autoreset=True).pack

    def _new_packer(self, autoreset: bool = True) -> msgpack.Packer:
        return msgpack.Packer(
            default=self._default, use_bin_type=True, strict_types=True, autoreset=autoreset
        )

    def _default(self, obj: Any) -> Any:
        t = type(obj)
        if t is tuple:
            return msgpack.ExtType(EXT_TUPLE, self._nested(list(obj)))
        if t is set:
            return msgpack.ExtType(EXT_SET, self._nested(list(obj)))
        if t is frozenset:
            return msgpack.ExtType(EXT_FROZENSET, self._nested(list(obj)))
        if t is int:  # only reached when it does not fit in 64 bits
            return msgpack.ExtType(EXT_BIGINT, str(obj).encode())
        # Subclasses of builtins travel as the builtin (strict_types sends them here).
        if isinstance(obj, bool):
            return bool(obj)
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return float(obj)
        if isinstance(obj, str):
            return str.__str__(obj)
        if isinstance(obj, bytes | bytearray | memoryview):
            return bytes(obj)
        if isinstance(obj, dict):
            return dict(obj)
        if isinstance(obj, list):
            return list(obj)
        if isinstance(obj, tuple):
            return msgpack.ExtType(EXT_TUPLE, self._nested(list(obj)))
        if self.allow_pickle:
            return msgpack.ExtType(EXT_PICKLE, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        raise TypeError(
            f"cannot send a {t.__module__}.{t.__qualname__} to/from a pool worker: use msgpack "
            "types (None, bool, int, float, str, bytes, list, tuple, dict, set) or create the "
            "pool with allow_pickle=True"
        )

    def _nested(self, obj: Any) -> bytes:
        # A fresh Packer: this runs inside another Packer's pack() on the same thread.
        return self._new_packer().pack(obj)

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == EXT_TUPLE:
            return tuple(self.unpack(data))
        if code == EXT_SET:
            return set(self.unpack(data))
        if code == EXT_FROZENSET:
            return frozenset(self.unpack(data))
        if code == EXT_BIGINT:
            return int(data.decode())
        if code == EXT_PICKLE:
            if not self.allow_pickle:
                raise FrameError("received a pickled value but this pool has allow_pickle=False")
            return pickle.loads(data)
        return msgpack.ExtType(code, data)

    def pack(self, obj: Any) -> bytes:
        """The msgpack body of ``obj`` (no header)."""
        packer = getattr(self._local, "packer", None)
        if packer is None:
            packer = self._local.packer = self._new_packer()
        try:
            return packer.pack(obj)
        except BaseException:
            packer.reset()
            raise

    def frame(self, obj: Any) -> bytes:
        """Header + body. Raises FrameError if the body exceeds ``max_frame``."""
        body = self.pack(obj)
        n = len(body)
        if n > self.max_frame:
            raise FrameError(f"frame of {n} bytes exceeds max_frame={self.max_frame}")
        return HEADER.pack(n) + body

    def unpack(self, data: Any) -> Any:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, ext_hook=self._ext_hook, use_list=True
        )

    def decode(self, body: Any) -> list[Any]:
        """Decode one frame body into a message list; FrameError if it is not one."""
        try:
            msg = self.unpack(body)
        except FrameError:
            raise
        except Exception as exc:
            raise FrameError(f"malformed frame: {type(exc).__name__}: {exc}") from None
        if type(msg) is not list or not msg or type(msg[0]) is not int:
            raise FrameError(f"malformed frame: expected [kind, ...], got {type(msg).__name__}")
        return msg


class FrameReader:
    """Splits a byte stream into decoded messages; keeps partial frames between feeds."""

    __slots__ = ("_buf", "_codec", "_need", "_rbuf", "_rview", "max_frame")

    def __init__(self, codec: Codec, max_frame: int | None = None) -> None:
        self._codec = codec
        self.max_frame = max_frame if max_frame is not None else codec.max_frame
        self._buf = bytearray()
        self._need = HEADER_SIZE
        # recv_into a reused buffer: sock.recv(256 KiB) would allocate (mmap) per call
        self._rbuf = bytearray(RECV_SIZE)
        self._rview = memoryview(self._rbuf)

    def recv(self, sock: Any, flags: int = 0) -> list[list[Any]] | None:
        """One ``recv`` from ``sock``: the complete messages, or None at EOF.
        Socket errors (BlockingIOError included) propagate."""
        n = sock.recv_into(self._rbuf, RECV_SIZE, flags)
        if not n:
            return None
        return self.feed(self._rview[:n])

    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: Any) -> list[list[Any]]:
        """Add bytes (or a memoryview, only read during the call); return the complete
        messages (FrameError on a bad frame)."""
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []
            src: Any = self._buf
        else:
            src = data
        out: list[list[Any]] = []
        off = 0
        end = len(src)
        decode = self._codec.decode
        unpack_from = HEADER.unpack_from
        with memoryview(src) as view:
            while end - off >= HEADER_SIZE:
                (n,) = unpack_from(src, off)
                if n > self.max_frame:
                    raise FrameError(f"frame of {n} bytes exceeds max_frame={self.max_frame}")
                if end - off - HEADER_SIZE < n:
                    self._need = HEADER_SIZE + n
                    break
                start = off + HEADER_SIZE
                body = view[start : start + n]
                try:
                    out.append(decode(body))
                finally:
                    body.release()
                off = start + n
            else:
                self._need = HEADER_SIZE
        if src is self._buf:
            del self._buf[:off]
        elif off < end:
            self._buf = bytearray(src[off:])
        return out
