"""Sealed log segments kept compressed, in zstd's seekable format, and read back by offset.

A sealed segment never changes again, so it can be stored compressed. The format is the one
of zstd's ``contrib/seekable_format`` (version 0.1.0), chosen for two readers at once:

* Operators: the file is a plain sequence of zstd frames followed by one *skippable* frame,
  so ``zstd -d``, ``zstdcat`` or any zstd library streams it back to exactly the segment's
  bytes (decoders ignore skippable frames). No tool of ours is needed to read a segment.
* The log's readers, which binary-search a segment by byte offset (``pread`` at a guess,
  find the next line, compare): each frame is compressed independently and the seek table
  says where each one starts in both the compressed file and the plain bytes, so
  :meth:`CompressedSegment.pread` decompresses only the frames that cover the range asked.

Layout (all integers little-endian)::

    zstd frame 0 | zstd frame 1 | ... | zstd frame N-1 | seek table frame

    seek table frame:
        Skippable_Magic_Number  u32  0x184D2A5E
        Frame_Size              u32  N * 12 + 9 (the bytes that follow)
        N entries:
            Compressed_Size     u32  bytes of frame i in this file
            Decompressed_Size   u32  plain bytes frame i holds
            Checksum            u32  low 32 bits of XXH64 of those plain bytes
        Number_Of_Frames        u32  N
        Seek_Table_Descriptor   u8   0x80 (Checksum_Flag; the other bits 0)
        Seekable_Magic_Number   u32  0x8F92EAB1 (the file's last 4 bytes)

Every frame we write carries zstd's own content checksum (the same low 32 bits of XXH64,
which zstd checks on decompression), and its content size in its header. The seek table's
checksum is copied from the frame's last 4 bytes: it is the value the format asks for
(``zstandard`` does not expose XXH64 itself), and a reader can match the two cheaply.

Frames hold whole lines only (each ends right after a ``\\n``, bar a torn last line), about
:data:`FRAME_BYTES` of plain bytes each; a line longer than that gets a frame of its own. A
frame boundary is therefore also a line boundary, which keeps a line's bytes in one frame.

Nothing read back from disk is trusted (contract §9): the footer, the frame count (bounded
by the file size before anything is allocated), the sizes (they must add up to the file
size; a frame claims at most :data:`MAX_FRAME_BYTES`), each frame's header and checksum
are checked, and every problem is a :class:`CorruptSegment` naming the file, never a zstd
error or an absurd allocation.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import os
import struct
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from types import TracebackType
from typing import Self

import zstandard

from sidecar.datadir import open_regular
from sidecar.fs import fsync_dir, write_all
from sidecar.log.files import pread_exact

FRAME_BYTES = 256 << 10  # decompressed bytes per frame, about: what a random read decompresses
COMPRESSED_SUFFIX = ".zst"  # a compressed segment is the plain name + ".zst"
TEMP_SUFFIX = ".tmp"  # compress_segment writes dst + ".tmp" first
# The most plain bytes one frame may hold, written or read: a reader allocates a frame's
# declared size, so a table claiming more is refused rather than believed. Far above any
# line the log accepts (its events are capped at 1 MiB by default).
MAX_FRAME_BYTES = 256 << 20
MAX_FRAMES = 0x8000000  # the limit of zstd's own seekable implementation

SKIPPABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
ZSTD_MAGIC = 0xFD2FB528
CHECKSUM_FLAG = 0x80
RESERVED_BITS = 0x7C  # bits 6-2 of the descriptor: must be 0 (bits 1-0 are ignored)
_SKIP_HEADER = struct.Struct("<II")
_FOOTER = struct.Struct("<IBI")
_ENTRY = struct.Struct("<III")
_MIN_FRAME = 8  # no frame is smaller (a skippable frame's header; a zstd frame needs 9+)
_READ_BLOCK = 1 << 18  # the least read from the source at a time


class CorruptSegment(OSError):
    """A compressed segment (or a segment being compressed) that is not what it must be.

    ``str()`` names the path and what is wrong; ``path`` is the file."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(errno.EIO, f"{path}: {what}")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def is_compressed_name(path: str) -> bool:
    """Whether ``path`` names a compressed segment (``*.jsonl.zst``)."""
    return path.endswith(".jsonl" + COMPRESSED_SUFFIX)


# --- writing -------------------------------------------------------------------------------


def compress_segment(
    src_path: str, dst_path: str, *, level: int = 3, frame_bytes: int = FRAME_BYTES
) -> tuple[int, int]:
    """Write ``src_path`` (a plain, sealed segment) compressed to ``dst_path``; return
    ``(plain_bytes, compressed_bytes)``.

    The file is written to ``dst_path + ".tmp"`` (created exclusively, 0600), fsync'd, then
    read back through :class:`CompressedSegment` and decompressed frame by frame: its size
    and hash must be the source's. Only then is it renamed to ``dst_path`` and the directory
    fsync'd, so ``dst_path`` is never half-written. On any failure the temp file is removed
    and the exception propagates. A temp file left by a crash is not ours to remove (another
    compressor may be writing it): creating ours then fails with ``FileExistsError``, and the
    caller, who knows no one else compresses this segment, clears it.

    The source must not change meanwhile (it is sealed): if it does, :class:`CorruptSegment`
    naming it is raised. A line longer than :data:`MAX_FRAME_BYTES` raises ``ValueError``.
    """
    if not 0 < frame_bytes <= MAX_FRAME_BYTES:
        raise ValueError(f"frame_bytes must be 1 to {MAX_FRAME_BYTES}, not {frame_bytes}")
    directory = os.path.dirname(dst_path) or "."
    tmp = dst_path + TEMP_SUFFIX
    src = open_regular(src_path, os.O_RDONLY)
    try:
        before = os.fstat(src)
        fd = open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            try:
                digest = _write_frames(src, src_path, before.st_size, fd, level, frame_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            after = os.fstat(src)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise CorruptSegment(src_path, "changed while it was being compressed; a sealed segment never changes")
            compressed = _verify(tmp, before.st_size, digest)
            os.rename(tmp, dst_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    finally:
        os.close(src)
    fsync_dir(directory)
    return before.st_size, compressed


def _write_frames(src: int, src_path: str, size: int, fd: int, level: int, frame_bytes: int) -> bytes:
    """Compress the source's ``size`` bytes to ``fd`` as frames of whole lines, then the seek
    table; return the hash of the plain bytes read (what the file must decompress to)."""
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    digest = hashlib.blake2b()
    entries: list[bytes] = []
    for frame in _frames(src, src_path, size, frame_bytes):
        digest.update(frame)
        packed = cctx.compress(frame)
        if len(entries) >= MAX_FRAMES:
            raise ValueError(f"{src_path}: more than {MAX_FRAMES} frames; use a larger frame_bytes")
        # The frame's trailing content checksum is XXH64's low 32 bits: the table's checksum.
        entries.append(_ENTRY.pack(len(packed), len(frame), int.from_bytes(packed[-4:], "little")))
        write_all(fd, packed)
    body = b"".join(entries)
    write_all(fd, _SKIP_HEADER.pack(SKIPPABLE_MAGIC, len(body) + _FOOTER.size))
    write_all(fd, body)
    write_all(fd, _FOOTER.pack(len(entries), CHECKSUM_FLAG, SEEKABLE_MAGIC))
    return digest.digest()


def _frames(src: int, src_path: str, size: int, frame_bytes: int) -> Iterator[bytes]:
    """The source's ``size`` bytes cut into frames: as many whole lines as fit in
    ``frame_bytes``, or one line alone when it is longer. Memory: a frame plus a read block
    (or the longest line)."""
    buf = bytearray()
    offset = 0
    searched = 0  # buf[frame_bytes:searched] holds no newline (a long line being gathered)
    while offset < size:
        chunk = pread_exact(src, min(max(frame_bytes, _READ_BLOCK), size - offset), offset)
        if not chunk:
            raise CorruptSegment(src_path, f"shrank to {offset} bytes while being compressed (it had {size})")
        offset += len(chunk)
        buf += chunk
        while len(buf) >= frame_bytes:
            end = buf.rfind(b"\n", 0, frame_bytes)
            if end < 0:  # the first line is longer than a frame: it gets one of its own
                end = buf.find(b"\n", max(frame_bytes, searched))
                if end < 0:
                    searched = len(buf)
                    if len(buf) > MAX_FRAME_BYTES:
                        raise ValueError(f"{src_path}: a line of over {MAX_FRAME_BYTES} bytes at {offset - len(buf)}")
                    break
            searched = 0
            yield _checked_frame(bytes(buf[: end + 1]), src_path)
            del buf[: end + 1]
    if buf:  # the rest: whole lines, or a torn last line kept as it is
        yield _checked_frame(bytes(buf), src_path)


def _checked_frame(frame: bytes, src_path: str) -> bytes:
    if len(frame) > MAX_FRAME_BYTES:
        raise ValueError(f"{src_path}: a frame of {len(frame)} bytes; lines must be under {MAX_FRAME_BYTES} bytes")
    return frame


def _verify(path: str, plain_size: int, digest: bytes) -> int:
    """Read ``path`` back as a reader would, frame by frame; return its size once it proves
    to decompress to ``plain_size`` bytes hashing to ``digest``."""
    with CompressedSegment(path, cache_frames=1) as segment:
        if segment.size != plain_size:
            raise CorruptSegment(path, f"holds {segment.size} plain bytes, not the {plain_size} compressed")
        check = hashlib.blake2b()
        for index in range(segment.frame_count):
            check.update(segment._decompress(index))
        if check.digest() != digest:
            raise CorruptSegment(path, "does not decompress to the bytes it was written from")
        return segment.file_size


# --- reading -------------------------------------------------------------------------------


@dataclass
class SegmentStats:
    """Counters of one open segment, for tests and benchmarks."""

    frames_decompressed: int = 0
    cache_hits: int = 0


def _compress_bound(plain: int) -> int:
    """More than zstd ever needs for ``plain`` bytes in one frame (its bound is about
    ``plain + plain/256 + 64``, header and checksum included): a frame larger than this is
    not one we would have written, and is not read into memory."""
    return plain + (plain >> 7) + 1024


class CompressedSegment:
    """Random access to a seekable-zstd segment: its decompressed bytes ``[0, size)`` read
    with :meth:`pread`, a frame at a time, the last ``cache_frames`` frames kept decompressed
    (so reading a segment front to back in blocks decompresses each frame once).

    Opening reads and checks the seek table (:class:`CorruptSegment` if it is missing or
    inconsistent); each frame is checked when it is first decompressed. Safe to share
    between threads (one lock; decompressing a frame takes about a millisecond).
    """

    def __init__(self, path: str, *, cache_frames: int = 4) -> None:
        if cache_frames < 1:
            raise ValueError(f"cache_frames must be at least 1, not {cache_frames}")
        self.path = path
        self.stats = SegmentStats()
        self._cache_frames = cache_frames
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._dctx = zstandard.ZstdDecompressor()
        self._fd = open_regular(path, os.O_RDONLY)
        try:
            self._load_table()
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise

    def _load_table(self) -> None:
        """Read the seek table and check it against the file before believing any of it."""
        file_size = os.fstat(self._fd).st_size
        least = _SKIP_HEADER.size + _FOOTER.size
        if file_size < least:
            raise CorruptSegment(self.path, f"is {file_size} bytes, too short for a seek table ({least} at least)")
        footer = pread_exact(self._fd, _FOOTER.size, file_size - _FOOTER.size)
        if len(footer) != _FOOTER.size:
            raise CorruptSegment(self.path, "shrank while being opened")
        count, descriptor, magic = _FOOTER.unpack(footer)
        if magic != SEEKABLE_MAGIC:
            raise CorruptSegment(
                self.path, f"has no seek table (its last 4 bytes are {magic:#010x}, not {SEEKABLE_MAGIC:#010x})"
            )
        if descriptor & RESERVED_BITS:
            raise CorruptSegment(self.path, f"has reserved bits set in its seek table descriptor ({descriptor:#04x})")
        width = 3 if descriptor & CHECKSUM_FLAG else 2
        entry_bytes = 4 * width
        if count > MAX_FRAMES or least + count * (entry_bytes + _MIN_FRAME) > file_size:
            raise CorruptSegment(self.path, f"claims {count} frames, more than its {file_size} bytes can hold")
        table_size = least + count * entry_bytes
        table = pread_exact(self._fd, table_size, file_size - table_size)
        if len(table) != table_size:
            raise CorruptSegment(self.path, "shrank while being opened")
        skip_magic, frame_size = _SKIP_HEADER.unpack_from(table)
        if skip_magic != SKIPPABLE_MAGIC or frame_size != table_size - _SKIP_HEADER.size:
            raise CorruptSegment(
                self.path, f"has a seek table of {count} frames whose skippable frame header does not match it"
            )
        fields = array("I")
        assert fields.itemsize == 4
        fields.frombytes(table[_SKIP_HEADER.size : _SKIP_HEADER.size + count * entry_bytes])
        if sys.byteorder == "big":
            fields.byteswap()
        packed, plain = fields[0::width], fields[1::width]
        for index, (csize, psize) in enumerate(zip(packed, plain)):
            if csize < _MIN_FRAME or psize > MAX_FRAME_BYTES or (psize and csize > _compress_bound(psize)):
                raise CorruptSegment(
                    self.path, f"has an impossible seek table entry: frame {index} of {csize} bytes holding {psize}"
                )
        data_size = sum(packed)
        if data_size + table_size != file_size:
            raise CorruptSegment(
                self.path,
                f"is {file_size} bytes, but its {count} frames add up to {data_size} and its table to {table_size}",
            )
        self.file_size = file_size
        self.frame_count = count
        self._packed = packed
        self._plain = plain
        self._checksums = fields[2::width] if width == 3 else None
        self._offsets = array("Q", accumulate(packed, initial=0))  # where frame i starts in the file
        self._starts = array("Q", accumulate(plain, initial=0))  # where its plain bytes start
        self.size: int = self._starts[-1]

    def pread(self, n: int, offset: int) -> bytes:
        """Up to ``n`` plain bytes at ``offset``, like ``os.pread`` on the plain segment:
        fewer at the end, ``b""`` at or past it."""
        if n < 0 or offset < 0:
            raise ValueError(f"pread needs n >= 0 and offset >= 0, not {n} and {offset}")
        end = min(offset + n, self.size)
        if offset >= end:
            self._check_open()
            return b""
        parts: list[bytes] = []
        with self._lock:
            self._check_open()
            index = bisect.bisect_right(self._starts, offset) - 1
            pos = offset
            while pos < end:
                start, length = self._starts[index], self._plain[index]
                if length:  # an empty (or skippable) frame holds nothing to read
                    frame = self._frame(index)
                    stop = min(end - start, length)
                    parts.append(frame[pos - start : stop])
                    pos = start + stop
                index += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError(f"{self.path}: the segment is closed")

    def _frame(self, index: int) -> bytes:
        """Frame ``index`` decompressed, from the cache when it is there (lock held)."""
        frame = self._cache.get(index)
        if frame is not None:
            self._cache.move_to_end(index)
            self.stats.cache_hits += 1
            return frame
        frame = self._decompress(index)
        self._cache[index] = frame
        if len(self._cache) > self._cache_frames:
            self._cache.popitem(last=False)
        return frame

    def _decompress(self, index: int) -> bytes:
        """Read and decompress frame ``index``, checking it against its seek table entry."""
        packed, plain, at = self._packed[index], self._plain[index], self._offsets[index]
        where = f"frame {index} (at byte {at})"
        data = pread_exact(self._fd, packed, at)
        if len(data) != packed:
            raise CorruptSegment(self.path, f"is cut short: {where} has {len(data)} of its {packed} bytes")
        if plain == 0:
            return b""
        if int.from_bytes(data[:4], "little") != ZSTD_MAGIC:
            raise CorruptSegment(self.path, f"{where} is not a zstd frame")
        try:
            params = zstandard.get_frame_parameters(data)
            if params.content_size not in (zstandard.CONTENTSIZE_UNKNOWN, plain):
                raise CorruptSegment(
                    self.path, f"{where} holds {params.content_size} bytes by its header, {plain} by the seek table"
                )
            if params.dict_id:
                raise CorruptSegment(self.path, f"{where} needs a dictionary ({params.dict_id})")
            checksums = self._checksums
            if (
                checksums is not None
                and params.has_checksum
                and int.from_bytes(data[-4:], "little") != checksums[index]
            ):
                raise CorruptSegment(self.path, f"{where} has a checksum other than its seek table entry's")
            # At most `plain` bytes are allocated: the header's size was matched above.
            out = self._dctx.decompress(data, max_output_size=plain, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise CorruptSegment(self.path, f"{where} does not decompress: {exc}") from None
        if len(out) != plain:
            raise CorruptSegment(self.path, f"{where} decompresses to {len(out)} bytes, not {plain}")
        self.stats.frames_decompressed += 1
        return out

    @property
    def frames_decompressed(self) -> int:
        """How many frames were decompressed so far (``stats.frames_decompressed``)."""
        return self.stats.frames_decompressed

    def close(self) -> None:
        """Close the file and drop the cached frames; closing again does nothing."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._cache.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
