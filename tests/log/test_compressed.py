"""Sealed segments compressed in zstd's seekable format: plain zstd reads them back whole,
:class:`CompressedSegment` reads any range by offset, frames end at line ends, and every kind
of damage is a :class:`CorruptSegment` (never wrong bytes, never a zstd error)."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.datadir import UnsafePathError
from sidecar.log import compressed
from sidecar.log.compressed import (
    COMPRESSED_SUFFIX,
    FRAME_BYTES,
    CompressedSegment,
    CorruptSegment,
    compress_segment,
    is_compressed_name,
)

SMALL = 4096  # frame_bytes in most tests: many frames from a small file


# --- helpers -------------------------------------------------------------------------------


def jsonl(path: Path, count: int, *, seed: int = 7, long_line: int = 3 * SMALL + 17) -> bytes:
    """A segment of ``count`` event lines of uneven sizes, one of them ``long_line`` bytes
    of padding (longer than a frame); returns its bytes."""
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        pad = long_line if i == count // 2 else rng.choice([0, 5, 40, 300, 1500, 5000])
        doc = {"seq": i + 1, "type": "a.b", "data": {"pad": "é" * (pad // 2) + "x" * (pad % 2)}}
        lines.append(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    data = b"".join(lines)
    path.write_bytes(data)
    return data


def compress(tmp_path: Path, data: bytes, frame_bytes: int = SMALL, name: str = "seg.jsonl") -> Path:
    src = tmp_path / name
    src.write_bytes(data)
    dst = tmp_path / (name + COMPRESSED_SUFFIX)
    plain, packed = compress_segment(str(src), str(dst), frame_bytes=frame_bytes)
    assert (plain, packed) == (len(data), dst.stat().st_size)
    return dst


def seek_table(path: Path) -> tuple[list[tuple[int, int, int]], int]:
    """The seek table parsed by the spec, independently of the module: entries of
    (compressed size, decompressed size, checksum) and the descriptor."""
    raw = path.read_bytes()
    count, descriptor, magic = struct.unpack("<IBI", raw[-9:])
    assert magic == 0x8F92EAB1
    width = 12 if descriptor & 0x80 else 8
    start = len(raw) - 9 - count * width - 8
    skip_magic, frame_size = struct.unpack_from("<II", raw, start)
    assert (skip_magic, frame_size) == (0x184D2A5E, count * width + 9)
    entries = []
    for i in range(count):
        fields = struct.unpack_from("<III" if width == 12 else "<II", raw, start + 8 + i * width)
        entries.append((fields[0], fields[1], fields[2] if width == 12 else 0))
    assert sum(e[0] for e in entries) == start
    return entries, descriptor


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64, written out from its spec: to check the table's checksums against the format's
    definition rather than against zstd's own frame checksum."""
    p1, p2, p3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
    p4, p5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5
    m = (1 << 64) - 1

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (64 - r))) & m

    def rnd(acc: int, lane: int) -> int:
        return (rotl((acc + lane * p2) & m, 31) * p1) & m

    n, i = len(data), 0
    if n >= 32:
        v = [(seed + p1 + p2) & m, (seed + p2) & m, seed, (seed - p1) & m]
        while i + 32 <= n:
            v = [rnd(acc, lane) for acc, lane in zip(v, struct.unpack_from("<4Q", data, i))]
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & m
        for acc in v:
            h = ((h ^ rnd(0, acc)) * p1 + p4) & m
    else:
        h = (seed + p5) & m
    h = (h + n) & m
    while i + 8 <= n:
        h = (rotl(h ^ rnd(0, struct.unpack_from("<Q", data, i)[0]), 27) * p1 + p4) & m
        i += 8
    if i + 4 <= n:
        h = (rotl(h ^ ((struct.unpack_from("<I", data, i)[0] * p1) & m), 23) * p2 + p3) & m
        i += 4
    while i < n:
        h = (rotl(h ^ ((data[i] * p5) & m), 11) * p1) & m
        i += 1
    h = ((h ^ (h >> 33)) * p2) & m
    h = ((h ^ (h >> 29)) * p3) & m
    return h ^ (h >> 32)


def read_all(path: Path, block: int = 65536) -> bytes:
    with CompressedSegment(str(path)) as segment:
        return b"".join(segment.pread(block, at) for at in range(0, segment.size, block))


# --- the format ----------------------------------------------------------------------------


line_sizes = st.lists(
    st.one_of(st.integers(0, 200), st.integers(200, 3 * SMALL), st.sampled_from([SMALL - 1, SMALL, SMALL + 1])),
    min_size=1,
    max_size=60,
)
reads = st.lists(st.tuples(st.floats(0, 1.1), st.integers(0, 5 * SMALL)), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=line_sizes, reads=reads, frame_bytes=st.sampled_from([64, 1000, SMALL]))
def test_any_range_reads_as_in_the_plain_file(
    sizes: list[int], reads: list[tuple[float, int]], frame_bytes: int
) -> None:
    """Random JSONL, with lines shorter, as long as and longer than a frame (one always is):
    pread at any offset and length gives the plain file's bytes, as os.pread would."""
    lines = [json.dumps({"seq": i, "pad": "x" * size}).encode() + b"\n" for i, size in enumerate(sizes)]
    lines.append(json.dumps({"long": "y" * (frame_bytes + 100)}).encode() + b"\n")
    data = b"".join(lines)
    with tempfile.TemporaryDirectory() as tmp:
        dst = compress(Path(tmp), data, frame_bytes)
        with CompressedSegment(str(dst)) as segment:
            assert segment.size == len(data)
            for fraction, n in reads:
                at = int(fraction * len(data))
                assert segment.pread(n, at) == data[at : at + n]
            assert segment.pread(10, len(data)) == b"" and segment.pread(10, len(data) + 5) == b""
            assert segment.pread(0, 3) == b""


def test_plain_zstd_decompresses_to_the_original(tmp_path: Path) -> None:
    """What operators rely on: zstd streaming (the library, the CLI) reads the file as one
    stream of frames, skips the seek table, and gives back exactly the segment."""
    data = jsonl(tmp_path / "plain", 300)
    dst = compress(tmp_path, data)
    with open(dst, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as reader:
        assert reader.read() == data
    dobj = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
    assert dobj.decompress(dst.read_bytes()) == data
    if shutil.which("zstd"):
        run = subprocess.run(["zstd", "-dc", str(dst)], capture_output=True, check=True, timeout=60)
        assert run.stdout == data


def test_frames_end_at_line_ends_and_the_table_follows_the_spec(tmp_path: Path) -> None:
    """Each frame ends right after a newline; it holds at most frame_bytes unless it is one
    long line alone; the checksums are XXH64's low 32 bits of each frame's plain bytes."""
    assert xxh64(b"") == 0xEF46DB3751D8E999  # the reference value
    data = jsonl(tmp_path / "plain", 400)
    dst = compress(tmp_path, data)
    entries, descriptor = seek_table(dst)
    assert descriptor == 0x80 and len(entries) > 10
    at = 0
    for _, plain, checksum in entries:
        frame = data[at : at + plain]
        assert frame.endswith(b"\n")
        assert plain <= SMALL or frame.count(b"\n") == 1
        assert checksum == xxh64(frame) & 0xFFFFFFFF
        at += plain
    assert at == len(data)
    assert any(plain > SMALL for _, plain, _ in entries)  # the long line got a frame of its own
    # frames are packed: each but the last would have overflowed with the next line
    offsets = [0]
    for _, plain, _ in entries:
        offsets.append(offsets[-1] + plain)
    for end in offsets[1:-1]:
        next_line = data[end : data.index(b"\n", end) + 1]
        start = offsets[offsets.index(end) - 1]
        assert end - start + len(next_line) > SMALL


def test_the_last_line_without_a_newline_is_kept_as_it_is(tmp_path: Path) -> None:
    data = b'{"a":1}\n' * 1000 + b'{"torn'
    dst = compress(tmp_path, data, 1000)
    assert read_all(dst, 777) == data
    assert zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(dst.read_bytes()) == data


def test_an_empty_segment(tmp_path: Path) -> None:
    dst = compress(tmp_path, b"")
    assert dst.stat().st_size == 17  # the seek table alone
    with CompressedSegment(str(dst)) as segment:
        assert segment.size == 0 and segment.pread(100, 0) == b""


@pytest.mark.parametrize("block", [1000, SMALL, 10_000, 65536, 4 << 20])
def test_reading_front_to_back_decompresses_each_frame_once(tmp_path: Path, block: int) -> None:
    data = jsonl(tmp_path / "plain", 500)
    dst = compress(tmp_path, data)
    frames = len(seek_table(dst)[0])
    with CompressedSegment(str(dst)) as segment:
        assert b"".join(segment.pread(block, at) for at in range(0, segment.size, block)) == data
        assert segment.stats.frames_decompressed == segment.frames_decompressed == frames


def test_the_cache_keeps_the_last_frames(tmp_path: Path) -> None:
    data = jsonl(tmp_path / "plain", 500)
    dst = compress(tmp_path, data)
    with CompressedSegment(str(dst), cache_frames=2) as segment:
        segment.pread(10, 0)
        segment.pread(10, SMALL * 3)
        segment.pread(10, 5)
        assert segment.stats.frames_decompressed == 2 and segment.stats.cache_hits == 1
        segment.pread(10, SMALL * 6)  # evicts the least recently used frame (the second)
        segment.pread(10, SMALL * 3)
        assert segment.stats.frames_decompressed == 4


def test_close_and_misuse(tmp_path: Path) -> None:
    dst = compress(tmp_path, b'{"a":1}\n' * 10)
    segment = CompressedSegment(str(dst))
    with pytest.raises(ValueError):
        segment.pread(-1, 0)
    with pytest.raises(ValueError):
        segment.pread(1, -1)
    segment.close()
    segment.close()
    with pytest.raises(ValueError, match="closed"):
        segment.pread(1, 0)
    with pytest.raises(ValueError):
        CompressedSegment(str(dst), cache_frames=0)


def test_names() -> None:
    assert is_compressed_name("logs/c1/000001.jsonl.zst")
    assert not is_compressed_name("logs/c1/000001.jsonl")
    assert not is_compressed_name("logs/c1/000001.zst")
    assert FRAME_BYTES == 256 << 10


# --- damage --------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, bytes]:
    """A compressed segment of a few dozen frames, and its plain bytes."""
    data = jsonl(tmp_path / "plain", 200)
    return compress(tmp_path, data), data


def opens_or_reads_corrupt(path: Path, data: bytes | None = None) -> None:
    """Opening and reading the whole file raises CorruptSegment (when ``data`` is given, it
    may instead read back exactly ``data``: a change the format does not interpret)."""
    try:
        got = read_all(path, 5000)
    except CorruptSegment as exc:
        assert str(path) in str(exc)
        assert isinstance(exc, OSError)
        return
    assert data is not None and got == data, "damage went unnoticed and changed the bytes read"


TRUNCATIONS: dict[str, Callable[[int], int]] = {
    "last byte": lambda n: n - 1,
    "magic": lambda n: n - 4,
    "footer": lambda n: n - 9,
    "footer and an entry": lambda n: n - 21,
    "half": lambda n: n // 2,
    "all but 3": lambda n: 3,
    "all": lambda n: 0,
}


@pytest.mark.parametrize("cut", TRUNCATIONS)
def test_a_truncated_file(small: tuple[Path, bytes], cut: str) -> None:
    path, _ = small
    raw = path.read_bytes()
    path.write_bytes(raw[: TRUNCATIONS[cut](len(raw))])
    with pytest.raises(CorruptSegment, match=str(path)):
        CompressedSegment(str(path))


def test_bytes_missing_from_the_middle(small: tuple[Path, bytes]) -> None:
    path, _ = small
    raw = path.read_bytes()
    path.write_bytes(raw[:100] + raw[200:])
    with pytest.raises(CorruptSegment, match="add up to"):
        CompressedSegment(str(path))


@pytest.mark.parametrize("seed", range(5))
def test_a_garbage_footer(small: tuple[Path, bytes], seed: int) -> None:
    path, _ = small
    raw = path.read_bytes()
    path.write_bytes(raw[:-9] + random.Random(seed).randbytes(9))
    with pytest.raises(CorruptSegment, match="seek table"):
        CompressedSegment(str(path))


def patch_table(path: Path, index: int, *, packed: int | None = None, plain: int | None = None) -> None:
    raw = bytearray(path.read_bytes())
    count = struct.unpack("<I", raw[-9:-5])[0]
    at = len(raw) - 9 - count * 12 + index * 12
    if packed is not None:
        struct.pack_into("<I", raw, at, packed)
    if plain is not None:
        struct.pack_into("<I", raw, at + 4, plain)
    path.write_bytes(bytes(raw))


def test_a_frame_claiming_4_gib_is_refused_without_allocating_it(small: tuple[Path, bytes]) -> None:
    path, _ = small
    patch_table(path, 1, plain=0xFFFFFFFF)
    with pytest.raises(CorruptSegment, match="impossible seek table entry: frame 1"):
        CompressedSegment(str(path))


def test_a_huge_frame_count_is_refused_before_reading(small: tuple[Path, bytes]) -> None:
    path, _ = small
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, len(raw) - 9, 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptSegment, match="claims 4294967295 frames"):
        CompressedSegment(str(path))


def test_a_frame_larger_than_its_content_could_need_is_refused(small: tuple[Path, bytes]) -> None:
    """Sizes shifted between frames still add up to the file; a frame far larger than zstd
    could make of its plain bytes is not read into memory."""
    path, _ = small
    entries, _ = seek_table(path)
    for index in range(1, len(entries)):
        patch_table(path, index, packed=8)
    patch_table(path, 0, packed=sum(e[0] for e in entries) - 8 * (len(entries) - 1), plain=1)
    with pytest.raises(CorruptSegment, match="impossible"):
        CompressedSegment(str(path))


def test_reserved_descriptor_bits_are_refused(small: tuple[Path, bytes]) -> None:
    path, data = small
    raw = bytearray(path.read_bytes())
    raw[-5] |= 0x03  # unused bits: not interpreted
    path.write_bytes(bytes(raw))
    assert read_all(path) == data
    raw[-5] |= 0x04  # a reserved bit
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptSegment, match="reserved bits"):
        CompressedSegment(str(path))


def test_a_decompressed_size_the_frame_does_not_have(small: tuple[Path, bytes]) -> None:
    """The table's plain sizes are not part of the size check; the frame's header is."""
    path, _ = small
    entries, _ = seek_table(path)
    patch_table(path, 2, plain=entries[2][1] + 1)
    with CompressedSegment(str(path)) as segment:
        assert segment.pread(10, 0)  # frame 0 is fine
        with pytest.raises(CorruptSegment, match="frame 2 .* by its header"):
            segment.pread(10, entries[0][1] + entries[1][1])


def test_a_checksum_other_than_the_frames(small: tuple[Path, bytes]) -> None:
    path, _ = small
    raw = bytearray(path.read_bytes())
    count = struct.unpack("<I", raw[-9:-5])[0]
    raw[len(raw) - 9 - count * 12 + 8] ^= 1  # frame 0's checksum in the table
    path.write_bytes(bytes(raw))
    with CompressedSegment(str(path)) as segment, pytest.raises(CorruptSegment, match="checksum"):
        segment.pread(1, 0)


def test_flipped_bytes_inside_a_frame(small: tuple[Path, bytes]) -> None:
    """Every byte of a frame flipped in turn: reading the frame raises CorruptSegment, or
    (for a bit zstd does not use) gives the right bytes; never wrong bytes, never ZstdError."""
    path, data = small
    entries, _ = seek_table(path)
    start, (packed, plain, _) = entries[0][0], entries[1]
    raw = path.read_bytes()
    caught = 0
    for at in range(start, start + packed):
        damaged = bytearray(raw)
        damaged[at] ^= 0x55
        path.write_bytes(bytes(damaged))
        with CompressedSegment(str(path)) as segment:
            assert segment.pread(10, 0) == data[:10]  # the frame before is untouched
            try:
                got = segment.pread(plain, entries[0][1])
            except CorruptSegment as exc:
                assert "frame 1" in str(exc)
                caught += 1
                continue
            assert got == data[entries[0][1] : entries[0][1] + plain]
    assert caught > packed * 0.9


def test_any_single_damaged_byte_is_caught_or_harmless(tmp_path: Path) -> None:
    """Every byte of a small file (frames and table) flipped in turn."""
    data = b"".join(json.dumps({"seq": i, "pad": "z" * (i * 37 % 300)}).encode() + b"\n" for i in range(40))
    path = compress(tmp_path, data, 1000)
    raw = path.read_bytes()
    for at in range(len(raw)):
        damaged = bytearray(raw)
        damaged[at] ^= 0xA5
        path.write_bytes(bytes(damaged))
        opens_or_reads_corrupt(path, data)


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=400), count=st.integers(0, 40), descriptor=st.sampled_from([0, 0x80, 0x81]))
def test_garbage_with_a_seek_table_footer(body: bytes, count: int, descriptor: int) -> None:
    """Whatever precedes a valid-looking footer, opening and reading fail only as
    CorruptSegment."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.jsonl.zst"
        path.write_bytes(body + struct.pack("<IBI", count, descriptor, 0x8F92EAB1))
        opens_or_reads_corrupt(path)


def test_a_symlink_is_not_followed(small: tuple[Path, bytes], tmp_path: Path) -> None:
    path, _ = small
    link = tmp_path / "link.jsonl.zst"
    link.symlink_to(path)
    with pytest.raises(UnsafePathError):
        CompressedSegment(str(link))


# --- writing safely ------------------------------------------------------------------------


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.endswith((".zst", ".tmp")))


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_the_file_written_is_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        dst = compress(tmp_path, b'{"a":1}\n' * 100)
    finally:
        os.umask(old)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == [dst.name]


def test_a_missing_source_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        compress_segment(str(tmp_path / "gone.jsonl"), str(tmp_path / "gone.jsonl.zst"))
    assert leftovers(tmp_path) == []


def source_changing(
    monkeypatch: pytest.MonkeyPatch, src: Path, change: Callable[[], None]
) -> Callable[[int, int, int], bytes]:
    """Make ``change`` happen to the source right after the first block is read from it."""
    real = compressed.pread_exact
    done: list[bool] = []

    def pread(fd: int, size: int, offset: int) -> bytes:
        data = real(fd, size, offset)
        if not done:
            done.append(True)
            change()
        return data

    monkeypatch.setattr(compressed, "pread_exact", pread)
    return pread


@pytest.mark.parametrize("how", ["truncated", "unlinked and truncated", "appended to"])
def test_a_source_that_changes_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    src = tmp_path / "seg.jsonl"
    jsonl(src, 2000)

    def change() -> None:
        if how == "appended to":
            with open(src, "ab") as f:
                f.write(b'{"late":1}\n')
            return
        with open(src, "r+b") as f:
            if how.startswith("unlinked"):
                src.unlink()
            f.truncate(300_000)

    source_changing(monkeypatch, src, change)
    with pytest.raises(CorruptSegment, match="seg.jsonl: (shrank|changed)"):
        compress_segment(str(src), str(tmp_path / "seg.jsonl.zst"), frame_bytes=SMALL)
    assert leftovers(tmp_path) == []


def test_a_source_unlinked_midway_is_still_compressed_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The open file is read: unlinking its name (a retention sweep) changes nothing."""
    src = tmp_path / "seg.jsonl"
    data = jsonl(src, 2000)
    source_changing(monkeypatch, src, src.unlink)
    dst = tmp_path / "seg.jsonl.zst"
    compress_segment(str(src), str(dst), frame_bytes=SMALL)
    monkeypatch.undo()
    assert read_all(dst) == data


def test_a_failing_fsync_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "seg.jsonl"
    jsonl(src, 100)

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "fsync failed")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="fsync failed"):
        compress_segment(str(src), str(tmp_path / "seg.jsonl.zst"))
    assert leftovers(tmp_path) == []


def test_a_full_disk_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "seg.jsonl"
    jsonl(src, 400)
    real = compressed.write_all
    calls: list[int] = []

    def write_all(fd: int, data: bytes) -> None:
        calls.append(len(data))
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(compressed, "write_all", write_all)
    with pytest.raises(OSError) as caught:
        compress_segment(str(src), str(tmp_path / "seg.jsonl.zst"), frame_bytes=SMALL)
    assert caught.value.errno == errno.ENOSPC
    assert leftovers(tmp_path) == []


def test_output_that_does_not_decompress_to_the_source_is_never_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check after writing: a compressor that loses a byte is caught, whatever it wrote."""
    src = tmp_path / "seg.jsonl"
    jsonl(src, 400)
    real = zstandard.ZstdCompressor

    class Lossy:
        def __init__(self, **kwargs: Any) -> None:
            self._real = real(**kwargs)

        def compress(self, data: bytes) -> bytes:
            return self._real.compress(data[:-2] + b"!\n")

    monkeypatch.setattr(compressed.zstandard, "ZstdCompressor", Lossy)
    with pytest.raises(CorruptSegment, match="does not decompress to the bytes"):
        compress_segment(str(src), str(tmp_path / "seg.jsonl.zst"), frame_bytes=SMALL)
    assert leftovers(tmp_path) == []


def test_a_stale_temp_file_is_left_to_its_owner(tmp_path: Path) -> None:
    src = tmp_path / "seg.jsonl"
    jsonl(src, 10)
    stale = tmp_path / "seg.jsonl.zst.tmp"
    stale.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        compress_segment(str(src), str(tmp_path / "seg.jsonl.zst"))
    assert stale.read_bytes() == b"someone else's"
    assert leftovers(tmp_path) == ["seg.jsonl.zst.tmp"]


def test_a_line_too_long_for_any_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compressed, "MAX_FRAME_BYTES", 50_000)
    src = tmp_path / "seg.jsonl"
    src.write_bytes(b'{"a":1}\n' + b"x" * 600_000 + b"\n")
    with pytest.raises(ValueError, match="a line of over 50000 bytes"):
        compress_segment(str(src), str(tmp_path / "seg.jsonl.zst"), frame_bytes=1000)
    assert leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="frame_bytes"):
        compress_segment(str(src), str(tmp_path / "seg.jsonl.zst"), frame_bytes=0)


def test_an_existing_compressed_file_is_replaced_whole(tmp_path: Path) -> None:
    first = compress(tmp_path, b'{"a":1}\n' * 50)
    second = compress(tmp_path, b'{"b":2}\n' * 70)
    assert first == second and read_all(second) == b'{"b":2}\n' * 70
    assert leftovers(tmp_path) == [second.name]
