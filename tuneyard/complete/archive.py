"""A model folder as a tar (or tar.gz) stream, produced block by block.

tarfile writes each member's data in one call, which for a multi-GB weights file would
have to be held or spilled somewhere; here each member is its header, then its bytes read
in chunks, then padding, so nothing bigger than a chunk is ever in memory or on disk.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

FORMATS = ("tar", "tar.gz")
CHUNK_BYTES = 1 << 20
BLOCK = tarfile.BLOCKSIZE
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


def _members(folder: Path, arcname: str) -> list[tuple[tarfile.TarInfo, Path | None]]:
    top = tarfile.TarInfo(arcname)
    top.type, top.mode, top.mtime = tarfile.DIRTYPE, 0o755, int(folder.stat().st_mtime)
    members: list[tuple[tarfile.TarInfo, Path | None]] = [(top, None)]
    for path in sorted(folder.rglob("*")):
        info = tarfile.TarInfo(f"{arcname}/{path.relative_to(folder).as_posix()}")
        stat = path.stat()
        info.mtime = int(stat.st_mtime)
        if path.is_dir():
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            members.append((info, None))
        elif path.is_file():
            info.size, info.mode = stat.st_size, 0o644
            members.append((info, path))
    return members


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


def tar_size(folder: Path, arcname: str) -> int:
    """The exact length of the uncompressed archive (for Content-Length)."""
    total = len(END_OF_ARCHIVE)
    for info, _path in _members(folder, arcname):
        total += len(_header(info)) + info.size + (-info.size % BLOCK)
    return total


def _tar_blocks(folder: Path, arcname: str) -> Iterator[bytes]:
    for info, path in _members(folder, arcname):
        yield _header(info)
        if path is None:
            continue
        sent = 0
        with path.open("rb") as handle:
            while sent < info.size and (chunk := handle.read(min(CHUNK_BYTES, info.size - sent))):
                sent += len(chunk)
                yield chunk
        if sent != info.size:
            raise OSError(f"{path} changed size while it was being archived")
        if info.size % BLOCK:
            yield b"\0" * (-info.size % BLOCK)
    yield END_OF_ARCHIVE


def tar_stream(folder: Path, arcname: str, fmt: str = "tar") -> Iterator[bytes]:
    """The archive of `folder` (members under `arcname/`), as chunks to send or write."""
    if fmt == "tar":
        yield from _tar_blocks(folder, arcname)
        return
    gzip = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for block in _tar_blocks(folder, arcname):
        if compressed := gzip.compress(block):
            yield compressed
    yield gzip.flush()
