"""The images and captions an image LoRA is trained on: a zip archive, read and checked whole
before anything is kept, then unpacked into the data dir as a Hugging Face imagefolder (the
images and a metadata.jsonl of `file_name` and `text`).

An archive gives each image's caption as `<name>.txt` beside it or as a line of a
`metadata.jsonl` at its top (`{"file_name": "a.png", "text": "..."}`); a line of
metadata.jsonl wins over a .txt. Everything is bounded: the archive's size (by the caller),
its entries, what it unpacks to, each image's pixels and each caption's length. Pillow is
imported only when an archive is read.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from tuneyard.basemodels.card import format_bytes
from tuneyard.errors import Invalid, Unavailable
from tuneyard.images.schemas import MAX_SIDE
from tuneyard.storage import atomic_dir

# Image suffixes an archive may hold, and the formats Pillow must find in them.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
CAPTION_SUFFIX = ".txt"
METADATA = "metadata.jsonl"
MAX_IMAGES = 1000
# Images, their captions, metadata.jsonl and folders, with room to spare.
MAX_ENTRIES = 2 * MAX_IMAGES + 100
# What the archive may unpack to, all entries together: the bound on a decompression bomb.
MAX_UNPACKED_BYTES = 4 * 1024**3
MAX_METADATA_BYTES = 16 * 1024**2
MAX_CAPTION_CHARS = 2000
MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE
# Left out unread: what macOS and file managers add to archives.
IGNORED_PARTS = ("__MACOSX",)
SUPPORTED = "png, jpg, jpeg or webp images with a .txt caption beside each, or a metadata.jsonl"


@dataclass(frozen=True)
class TrainingSet:
    """What an unpacked archive holds: its images (each with a caption) and a digest of them
    all (image bytes and captions, in order), for the card's lineage."""

    images: int
    digest: str
    captions_from: str  # "txt", "metadata.jsonl" or "txt and metadata.jsonl"


def unpack_training_set(archive: BinaryIO, filename: str, target: Path) -> TrainingSet:
    """Check the whole archive and unpack it to `target` (created whole, or not at all)."""
    try:
        from PIL import Image
    except ImportError:
        raise Unavailable(
            "Training an image adapter needs Pillow: pip install 'tuneyard[images]' on the server."
        ) from None
    try:
        zipped = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise Invalid(
            f"{filename} is not a zip archive: zip the images and their captions ({SUPPORTED})."
        ) from None
    with zipped:
        entries = _entries(zipped, filename)
        images, captions, metadata = _sort(entries, filename)
        from_metadata = _read_metadata(zipped, metadata, images, filename) if metadata else {}
        used_txt = False
        pairs: list[tuple[str, zipfile.ZipInfo, str]] = []
        for path, info in images.items():
            caption = from_metadata.get(path)
            if caption is None:
                caption_info = captions.get(str(PurePosixPath(path).with_suffix("")))
                if caption_info is None:
                    stem = PurePosixPath(path).stem
                    raise Invalid(
                        f"{path} has no caption: add {stem}{CAPTION_SUFFIX} beside it, or a "
                        f'line {{"file_name": "{path}", "text": "..."}} to {METADATA}.'
                    )
                caption = _read_caption(zipped, caption_info, path)
                used_txt = True
            pairs.append((path, info, caption))
        _orphan_captions(captions, images)
        digest = hashlib.sha256()
        with atomic_dir(target) as staging:
            (staging / "images").mkdir()
            lines = []
            for index, (path, info, caption) in enumerate(pairs):
                data = _read_member(zipped, info)
                _check_image(Image, data, path)
                name = f"images/{index:04d}{PurePosixPath(path).suffix.lower()}"
                (staging / name).write_bytes(data)
                lines.append(json.dumps({"file_name": name, "text": caption, "source": path}))
                digest.update(hashlib.sha256(data).digest())
                digest.update(hashlib.sha256(caption.encode()).digest())
            (staging / METADATA).write_text("\n".join(lines) + "\n", encoding="utf-8")
    sources = [name for name, used in (("txt", used_txt), (METADATA, bool(from_metadata))) if used]
    return TrainingSet(
        images=len(pairs), digest=digest.hexdigest(), captions_from=" and ".join(sources)
    )


def read_training_set(folder: Path) -> list[dict[str, Any]]:
    """The unpacked set's records: `path` (the image file) and `text` (its caption)."""
    records = []
    with (folder / METADATA).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                entry = json.loads(line)
                records.append({"path": folder / entry["file_name"], "text": entry["text"]})
    return records


# -- reading the archive ---------------------------------------------------------------------


def _entries(zipped: zipfile.ZipFile, filename: str) -> dict[str, zipfile.ZipInfo]:
    """The archive's files by their path inside it: every path checked to stay inside, the
    count and the unpacked size bounded, and one top folder holding everything left out."""
    infos = zipped.infolist()
    if len(infos) > MAX_ENTRIES:
        raise Invalid(
            f"{filename} holds {len(infos):,} entries; an archive may hold at most "
            f"{MAX_IMAGES:,} images with their captions ({MAX_ENTRIES:,} entries)."
        )
    total = sum(info.file_size for info in infos)
    if total > MAX_UNPACKED_BYTES:
        raise Invalid(
            f"{filename} unpacks to {format_bytes(total)}; a training set may unpack to at "
            f"most {format_bytes(MAX_UNPACKED_BYTES)}. Use fewer or smaller images."
        )
    files: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        path = _inside_path(info.filename, filename)
        if info.is_dir() or path is None:
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise Invalid(f"{info.filename} in {filename} is a link; put the file itself there.")
        if info.flag_bits & 0x1:
            raise Invalid(f"{info.filename} in {filename} is encrypted; zip it without a password.")
        files[str(path)] = info
    tops = {PurePosixPath(path).parts[0] for path in files}
    if len(tops) == 1 and all(len(PurePosixPath(path).parts) > 1 for path in files):
        # Zipped as one folder (what "compress" in a file manager makes): read inside it.
        return {str(PurePosixPath(*PurePosixPath(p).parts[1:])): i for p, i in files.items()}
    return files


def _inside_path(name: str, filename: str) -> PurePosixPath | None:
    """The entry's path, refused where it would lead out of the folder it unpacks into; None
    for what is left out (macOS resource forks, hidden files)."""
    path = PurePosixPath(name)
    if (
        "\\" in name
        or "\0" in name
        or path.is_absolute()
        or ".." in path.parts
        or (path.parts and ":" in path.parts[0])
    ):
        raise Invalid(
            f"{filename} has an entry '{name}' whose path leads outside the archive's folder; "
            "zip the files with paths relative to their folder."
        )
    if not path.parts or any(part in IGNORED_PARTS for part in path.parts):
        return None
    if any(part.startswith(".") for part in path.parts):
        return None
    return path


def _sort(
    entries: dict[str, zipfile.ZipInfo], filename: str
) -> tuple[dict[str, zipfile.ZipInfo], dict[str, zipfile.ZipInfo], zipfile.ZipInfo | None]:
    """Images by path, captions by path without suffix, and metadata.jsonl."""
    images: dict[str, zipfile.ZipInfo] = {}
    captions: dict[str, zipfile.ZipInfo] = {}
    image_stems: set[str] = set()
    metadata = None
    for path, info in sorted(entries.items()):
        pure = PurePosixPath(path)
        suffix = pure.suffix.lower()
        if pure.name == METADATA:
            if len(pure.parts) > 1:
                raise Invalid(f"{path}: put {METADATA} at the top of the archive.")
            metadata = info
        elif suffix in IMAGE_FORMATS:
            stem = str(pure.with_suffix(""))
            if stem in image_stems:
                raise Invalid(
                    f"{path} and another image share the name {pure.stem}, so a caption "
                    f"{pure.stem}{CAPTION_SUFFIX} would not say which it is; rename one."
                )
            image_stems.add(stem)
            images[path] = info
        elif suffix == CAPTION_SUFFIX:
            captions[str(pure.with_suffix(""))] = info
        else:
            raise Invalid(
                f"{path} in {filename} is neither an image nor a caption; an archive holds "
                f"{SUPPORTED}. Remove it."
            )
    if not images:
        raise Invalid(f"{filename} holds no images: add {SUPPORTED}.")
    if len(images) > MAX_IMAGES:
        raise Invalid(
            f"{filename} holds {len(images):,} images; a training set may hold at most "
            f"{MAX_IMAGES:,}."
        )
    return images, captions, metadata


def _read_member(zipped: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    # zipfile stops at the size the entry declares (and those were bounded together) and
    # checks the CRC at the end.
    try:
        with zipped.open(info) as handle:
            return handle.read()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise Invalid(f"{info.filename} cannot be unpacked ({exc}); zip it again.") from None


def _read_metadata(
    zipped: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    images: dict[str, zipfile.ZipInfo],
    filename: str,
) -> dict[str, str]:
    if info.file_size > MAX_METADATA_BYTES:
        raise Invalid(f"{METADATA} is over {MAX_METADATA_BYTES // 1024**2} MiB.")
    try:
        text = _read_member(zipped, info).decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(f"{METADATA} is not UTF-8 text; save it as UTF-8.") from None
    captions: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise Invalid(f"{METADATA} line {number} is not JSON: {exc.msg}.") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            raise Invalid(
                f'{METADATA} line {number} needs "file_name" (the image\'s path in the '
                'archive) and "text" (its caption).'
            )
        name = entry["file_name"]
        if name not in images:
            raise Invalid(
                f"{METADATA} line {number} names {name}, which is not an image in {filename}."
            )
        if name in captions:
            raise Invalid(f"{METADATA} line {number} names {name} a second time.")
        caption = entry.get("text")
        if not isinstance(caption, str):
            raise Invalid(f'{METADATA} line {number} needs "text": the caption of {name}.')
        captions[name] = _checked_caption(caption, name)
    return captions


def _read_caption(zipped: zipfile.ZipFile, info: zipfile.ZipInfo, image: str) -> str:
    if info.file_size > 4 * MAX_CAPTION_CHARS:
        raise Invalid(f"{info.filename} is over {MAX_CAPTION_CHARS:,} characters.")
    try:
        text = _read_member(zipped, info).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Invalid(f"{info.filename} is not UTF-8 text; save it as UTF-8.") from None
    return _checked_caption(text, image)


def _checked_caption(text: str, image: str) -> str:
    caption = text.strip()
    if not caption:
        raise Invalid(f"The caption of {image} is empty; say what the image shows.")
    if len(caption) > MAX_CAPTION_CHARS:
        raise Invalid(
            f"The caption of {image} is {len(caption):,} characters; at most {MAX_CAPTION_CHARS:,}."
        )
    return caption


def _orphan_captions(
    captions: dict[str, zipfile.ZipInfo], images: dict[str, zipfile.ZipInfo]
) -> None:
    stems = {str(PurePosixPath(path).with_suffix("")) for path in images}
    for stem, info in captions.items():
        if stem not in stems:
            raise Invalid(
                f"{info.filename} is a caption without an image: no {PurePosixPath(stem).name}"
                ".png, .jpg or .webp beside it."
            )


def _check_image(image_module: Any, data: bytes, path: str) -> None:
    """Decoded whole here, so that the job never meets an image it cannot read; the size is
    read from the header first, so a huge image is refused before it is decoded."""
    try:
        with image_module.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise Invalid(
                    f"{path} is {width}x{height}; an image may be at most {MAX_SIDE}x{MAX_SIDE} "
                    "pixels."
                )
            found = opened.format
            opened.load()
    except Invalid:
        raise
    except image_module.DecompressionBombError:
        raise Invalid(
            f"{path} is larger than {MAX_SIDE}x{MAX_SIDE} pixels; an image may be at most that."
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise Invalid(
            f"{path} is not an image Tuneyard can read ({type(exc).__name__}); send PNG, JPEG "
            "or WebP files."
        ) from None
    if found not in IMAGE_FORMATS.values():
        raise Invalid(f"{path} holds a {found} image; send PNG, JPEG or WebP files.")
