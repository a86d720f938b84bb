"""The wire forms of checkpoint downloads: ``CheckpointChunk`` messages encoded and decoded
without a message object, and the bulk port's framing (``master_server.bulk``).

``DownloadCheckpoint`` streams a checkpoint's files as ``CheckpointChunk`` messages (``path``,
``offset``, ``data``, ``file_size``). Building a message object per chunk copies the data twice
more on each side (into the message, out of it); at several MiB per chunk those copies are most
of the cost of a download. The master therefore writes each message's bytes itself (a small
header, then the data) and the SDK reads them as a header plus a view of the data. The bytes
are an ordinary ``CheckpointChunk``: any protobuf client decodes them, and :func:`decode_chunk`
decodes any protobuf encoder's output (fields in any order, unknown fields skipped).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

#: The full method name, for stubs and handlers that carry raw bytes.
DOWNLOAD_METHOD = "/detsdk.v1.CheckpointService/DownloadCheckpoint"

#: Request metadata asking ``DownloadCheckpoint`` for a bulk-port ticket instead of messages.
BULK_REQUEST = "detsdk-bulk"
#: Initial metadata of the answer: the bulk port and the one-use ticket.
BULK_PORT = "detsdk-bulk-port"
BULK_TICKET = "detsdk-bulk-ticket"
#: Connections that may redeem one bulk ticket (files go in parallel, one per connection).
BULK_STREAMS = 4
#: Read size on both ends of the bulk port.
BULK_READ = 8 << 20
_PATH_LEN = struct.Struct("!H")
_SIZE = struct.Struct("!Q")

_PATH, _OFFSET, _DATA, _FILE_SIZE = 1, 2, 3, 4
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class Chunk(NamedTuple):
    """One decoded chunk; ``data`` is a view into the received message (no copy)."""

    path: str
    offset: int
    data: memoryview
    file_size: int


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 negatives, as protobuf encodes them
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_header(path: bytes, offset: int, file_size: int, data_len: int) -> bytes:
    """Everything of a chunk message before its ``data_len`` data bytes.

    Args:
        path: The file's relative path, UTF-8.
        offset: Where the data starts in the file.
        file_size: The file's size.
        data_len: How many data bytes follow the header.
    """
    out = bytearray()
    out += _varint(_PATH << 3 | _LEN) + _varint(len(path)) + path
    if offset:
        out += _varint(_OFFSET << 3 | _VARINT) + _varint(offset)
    if file_size:
        out += _varint(_FILE_SIZE << 3 | _VARINT) + _varint(file_size)
    if data_len:
        out += _varint(_DATA << 3 | _LEN) + _varint(data_len)
    return bytes(out)


def encode_chunk(path: bytes, offset: int, file_size: int, data: bytes) -> bytes:
    """A whole ``CheckpointChunk`` message (the data copied once, after the header)."""
    return encode_header(path, offset, file_size, len(data)) + data


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise ValueError("CheckpointChunk: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("CheckpointChunk: varint too long")


def decode_chunk(message: bytes) -> Chunk:
    """Decode one ``CheckpointChunk`` message.

    Raises:
        ValueError: The bytes are not a well-formed message.
    """
    buf = memoryview(message)
    pos, end = 0, len(buf)
    path, offset, file_size = "", 0, 0
    data = buf[0:0]
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
            if value >= 1 << 63:
                value -= 1 << 64
            if field == _OFFSET:
                offset = value
            elif field == _FILE_SIZE:
                file_size = value
        elif wire == _LEN:
            n, pos = _read_varint(buf, pos)
            if pos + n > end:
                raise ValueError("CheckpointChunk: truncated field")
            if field == _PATH:
                path = bytes(buf[pos : pos + n]).decode("utf-8")
            elif field == _DATA:
                data = buf[pos : pos + n]
            pos += n
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        else:
            raise ValueError(f"CheckpointChunk: unsupported wire type {wire}")
    if pos != end:
        raise ValueError("CheckpointChunk: truncated field")
    return Chunk(path, offset, data, file_size)


def pack_bulk_header(path: bytes, size: int) -> bytes:
    """The bulk port's header of one file (an empty ``path`` ends the transfer)."""
    return _PATH_LEN.pack(len(path)) + path + (_SIZE.pack(size) if path else b"")


def read_bulk_header(read_exact: Callable[[int], bytes]) -> tuple[str, int] | None:
    """Read one file header with ``read_exact(n)``; None at the end of the transfer."""
    (n,) = _PATH_LEN.unpack(read_exact(_PATH_LEN.size))
    if n == 0:
        return None
    path = read_exact(n).decode("utf-8")
    (size,) = _SIZE.unpack(read_exact(_SIZE.size))
    return path, size
