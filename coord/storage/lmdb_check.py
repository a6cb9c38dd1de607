"""Check an LMDB data file against its own meta pages before LMDB maps it.

LMDB reads its data file through a memory map. A file that is shorter than the
pages its meta page says are in use (cut by ``truncate``, a bad copy, a full disk
during a copy, a filesystem repair) does not produce an error: the first read of a
page past the end of the file kills the process with SIGBUS, with no message at
all. So the log reads the meta pages with plain file reads first and refuses a file
that cannot hold what they describe.

Layout read here (LMDB 0.9, ``mdb.c``), native byte order and word size (LMDB files
are not portable between architectures anyway)::

    page header, 16 bytes: mp_pgno u64, mp_pad u16, mp_flags u16, mp_lower u16,
                           mp_upper u16 (mp_lower/mp_upper are mp_pages u32 on an
                           overflow page)
    MDB_meta:   mm_magic u32 (0xBEEFC0DE), mm_version u32 (1), mm_address ptr,
                mm_mapsize size_t, mm_dbs[2] (48 bytes each: md_pad u32, md_flags u16,
                md_depth u16, then five u64: branch, leaf and overflow pages,
                entries, root), mm_last_pg u64, mm_txnid u64

``mm_dbs[0]`` is the free list (FREE_DBI), and its ``md_pad`` is the page size. Meta
page 0 sits at offset 0, meta page 1 at offset ``mm_psize``; LMDB uses the valid one
with the higher ``mm_txnid``, and so does this check. The file should then be at
least ``(mm_last_pg + 1) * mm_psize`` bytes long.

LMDB itself leaves a healthy file shorter than that now and then: pages that the
last transaction allocated past the end of the file and freed again before
committing ("loose" pages) are never written (``tests/unit/test_lmdb_check.py``
provokes it with the log's own mix of appends, purges and truncations). A strict
size rule would refuse healthy servers. Those pages are on LMDB's free list, which
records every page up to ``mm_last_pg`` that no tree uses, and LMDB writes a free
page before it ever reads it. So the rule is exact:

- empty, shorter than its two meta pages, or meta pages that are not LMDB's:
  refused;
- shorter than the meta page needs: every page missing (wholly or in part) must be
  on the free list, which is read here with plain file reads (its own pages must
  all lie inside the file); otherwise the file is refused as truncated. A short
  file that passes is left as it is: LMDB never reads the missing pages.

The free list is read only for a short file, and it is small (a few pages).
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

__all__ = ["LmdbFileError", "LmdbMeta", "check_data_file", "free_pages", "read_meta"]

MAGIC: Final = 0xBEEFC0DE
DATA_VERSION: Final = 1
P_BRANCH: Final = 0x01
P_LEAF: Final = 0x02
P_OVERFLOW: Final = 0x04
P_META: Final = 0x08
P_LEAF2: Final = 0x20
F_BIGDATA: Final = 0x01  # a leaf node whose data is on overflow pages
P_INVALID: Final = (1 << 64) - 1  # the root of an empty tree

_PAGE_HEADER = struct.Struct("=QHHHH")  # mp_pgno, mp_pad, mp_flags, mp_lower, mp_upper
_OVERFLOW_PAGES = struct.Struct("=I")  # mp_pages, in place of mp_lower/mp_upper
_NODE = struct.Struct("=HHHH")  # mn_lo, mn_hi, mn_flags, mn_ksize
_U64 = struct.Struct("=Q")
_META = struct.Struct("=IIQQ" + "IHHQQQQQ" * 2 + "QQ")
_META_OFFSET: Final = _PAGE_HEADER.size
_READ_BYTES: Final = _META_OFFSET + _META.size
_PAGE_BYTES_MIN: Final = 512  # LMDB's smallest page size ...
_PAGE_BYTES_MAX: Final = 1 << 16  # ... and its largest (MAX_PAGESIZE)


class LmdbFileError(Exception):
    """The data file is not a complete LMDB file; the message names the file."""


@dataclass(frozen=True, slots=True)
class LmdbMeta:
    """What one valid meta page says."""

    page_bytes: int
    last_page: int
    txnid: int
    free_root: int  # the root page of the free list (P_INVALID: empty)
    free_depth: int

    @property
    def needed_bytes(self) -> int:
        """The bytes the file needs to hold every page up to ``last_page``."""
        return (self.last_page + 1) * self.page_bytes


def _parse(raw: bytes) -> LmdbMeta | None:
    """The meta in one page's first bytes, or None if it is not a valid meta page."""
    if len(raw) < _READ_BYTES:
        return None
    _, _, flags, _, _ = _PAGE_HEADER.unpack_from(raw)
    fields = _META.unpack_from(raw, _META_OFFSET)
    magic, version = fields[0], fields[1]
    page_bytes, free_depth, free_root = fields[4], fields[6], fields[11]  # mm_dbs[0]: md_pad, md_depth, md_root
    last_page, txnid = fields[-2], fields[-1]
    if not flags & P_META or magic != MAGIC or version != DATA_VERSION:
        return None
    if not _PAGE_BYTES_MIN <= page_bytes <= _PAGE_BYTES_MAX or page_bytes & (page_bytes - 1):
        return None
    if last_page < 1:  # pages 0 and 1 are the meta pages themselves
        return None
    return LmdbMeta(page_bytes, last_page, txnid, free_root, free_depth)


def read_meta(path: Path) -> tuple[LmdbMeta, int]:
    """The meta page LMDB would use, and the file's size in bytes.

    Raises:
        LmdbFileError: the file is empty, too short for its meta pages, or its meta
            pages are not valid LMDB meta pages.
        OSError: the file cannot be read.
    """
    if sys.byteorder != "little" or struct.calcsize("P") != 8:  # pragma: no cover - 64-bit little-endian only
        raise LmdbFileError(f"{path}: only 64-bit little-endian LMDB files can be checked")
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            raise LmdbFileError(f"{path} is empty (0 bytes): it has lost its meta pages and every record")
        if size < _READ_BYTES:
            raise LmdbFileError(f"{path} is truncated ({size} bytes): too short for even one meta page")
        first = _parse(file.read(_READ_BYTES))
        if first is None:
            raise LmdbFileError(f"{path} is damaged: its first meta page is not a valid LMDB meta page")
        if size < 2 * first.page_bytes:
            raise LmdbFileError(
                f"{path} is truncated ({size} bytes): its two meta pages alone need {2 * first.page_bytes}"
            )
        file.seek(first.page_bytes)
        second = _parse(file.read(_READ_BYTES))
    if second is None or second.page_bytes != first.page_bytes:
        raise LmdbFileError(f"{path} is damaged: its second meta page is not a valid LMDB meta page")
    return max(first, second, key=lambda meta: meta.txnid), size


def check_data_file(path: Path) -> LmdbMeta:
    """Refuse an LMDB data file that is empty, has bad meta pages or is truncated.

    A file shorter than its meta page says is accepted only if every missing page
    is on LMDB's free list (what LMDB itself leaves, see the module docstring).

    Returns:
        The meta page LMDB will use.

    Raises:
        LmdbFileError: with a one-line message naming the file and what is wrong.
        OSError: the file cannot be read.
    """
    meta, size = read_meta(path)
    if size >= meta.needed_bytes:
        return meta
    missing = range(size // meta.page_bytes, meta.last_page + 1)
    with open(path, "rb") as file:
        free = free_pages(file, meta, size)
    if free is None or not free.issuperset(missing):
        live = "its free list is cut too" if free is None else f"page {min(set(missing) - free)} is in use"
        raise LmdbFileError(
            f"{path} is truncated ({size} bytes, its meta pages need {meta.needed_bytes}: "
            f"{meta.last_page + 1} pages of {meta.page_bytes} bytes, and {live})"
        )
    return meta


def free_pages(file: BinaryIO, meta: LmdbMeta, size: int) -> set[int] | None:
    """The page numbers on LMDB's free list, read from ``file`` page by page.

    Returns None if a page of the free list lies past ``size`` or does not look like
    the page it should be (then nothing can be said about the missing pages).
    """
    psize = meta.page_bytes
    if meta.free_root == P_INVALID:
        return set()

    def page(pgno: int, count: int = 1) -> bytes | None:
        if pgno > meta.last_page or (pgno + count) * psize > size:
            return None
        file.seek(pgno * psize)
        data = file.read(count * psize)
        if len(data) != count * psize or _PAGE_HEADER.unpack_from(data)[0] != pgno:
            return None
        return data

    free: set[int] = set()
    pending = [(meta.free_root, 1)]
    seen: set[int] = set()
    while pending:
        pgno, level = pending.pop()
        data = page(pgno)
        if data is None or pgno in seen or level > meta.free_depth:
            return None
        seen.add(pgno)
        _, _, flags, lower, _ = _PAGE_HEADER.unpack_from(data)
        if flags & P_LEAF2 or not flags & (P_BRANCH | P_LEAF) or lower < _PAGE_HEADER.size:
            return None
        count = (lower - _PAGE_HEADER.size) // 2
        for offset in struct.unpack_from(f"={count}H", data, _PAGE_HEADER.size):
            if offset + _NODE.size > psize:
                return None
            lo, hi, node_flags, key_bytes = _NODE.unpack_from(data, offset)
            if flags & P_BRANCH:
                pending.append((lo | hi << 16 | node_flags << 32, level + 1))
                continue
            data_bytes, start = lo | hi << 16, offset + _NODE.size + key_bytes
            if node_flags & F_BIGDATA:
                first = page(_U64.unpack_from(data, start)[0])
                if first is None or not _PAGE_HEADER.unpack_from(first)[2] & P_OVERFLOW:
                    return None
                pages = _OVERFLOW_PAGES.unpack_from(first, 12)[0]
                whole = page(_PAGE_HEADER.unpack_from(first)[0], pages)
                if whole is None:
                    return None
                record = whole[_PAGE_HEADER.size : _PAGE_HEADER.size + data_bytes]
            else:
                record = data[start : start + data_bytes]
            if len(record) < _U64.size:
                return None
            listed = _U64.unpack_from(record)[0]  # an IDL: the count, then the page numbers
            if _U64.size * (listed + 1) > len(record):
                return None
            free.update(struct.unpack_from(f"={listed}Q", record, _U64.size))
    return free
