"""Reading an uploaded document into plain text that remembers its pages, sheets or slides.

Every reader returns the text of each page; `_assemble` normalizes and joins them, so the
bounds, the normalization and the page spans are the same for every format. The formats that
live in a zip (DOCX, PPTX, XLSX) are measured before they are opened, and nothing follows a
link or an external reference.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
import time
import unicodedata
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneyard.errors import Invalid

# The longest text one document may give, and the most pages, sheets or slides it may have.
MAX_CHARS = 20_000_000
MAX_PAGES = 5000
# DOCX, PPTX and XLSX are zips: their declared uncompressed size and member count are checked
# before any parser sees them, so a small crafted file cannot expand into gigabytes.
MAX_UNZIPPED_BYTES = 200_000_000
MAX_ZIP_MEMBERS = 20_000
# Text formats are refused past this many bytes: UTF-8 needs at most 4 per character.
MAX_TEXT_BYTES = 4 * MAX_CHARS
# A conversion that takes longer than this (checked between pages) is given up.
MAX_SECONDS = 600.0
# A CSV field or JSON line may be this long; longer ones are not tabular data.
MAX_FIELD_CHARS = 1_000_000
PAGE_SEPARATOR = "\n\n"

MEDIA_TYPES = {
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".html": "text/html",
    ".htm": "text/html",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".csv": "text/csv",
    ".jsonl": "application/jsonl",
}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(MEDIA_TYPES)

# C0 and C1 control characters except tab and newline, and lone surrogates (a JSON string can
# carry one as an escape; it cannot be written as UTF-8).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_LINE_BREAKS = re.compile("\r\n?|[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


@dataclass(frozen=True)
class PageSpan:
    number: int  # 1-based page / sheet / slide number
    label: str  # "page 3", "sheet Sales", "slide 2"; "text" for formats without pages
    start: int  # char offsets into DocumentText.text, [start, end)
    end: int


@dataclass(frozen=True)
class DocumentText:
    text: str
    pages: list[PageSpan]  # cover the text in order, without gaps
    media_type: str

    def page_at(self, offset: int) -> PageSpan:
        """The page holding the character at `offset` (the last page for the end of text)."""
        if not self.pages:
            raise ValueError("The document has no pages.")
        index = bisect.bisect_right(self.pages, offset, key=lambda page: page.start) - 1
        return self.pages[max(index, 0)]


class UnreadableDocument(Invalid):
    """The file cannot be turned into text; the message says why and what to do."""


@dataclass(frozen=True)
class _Page:
    label: str
    text: str


def convert(path: Path, filename: str) -> DocumentText:
    """The text of the file at `path`; `filename`'s suffix decides how it is read."""
    suffix = Path(filename).suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        shown = f"'{suffix}'" if suffix else "no suffix"
        raise UnreadableDocument(
            f"{filename} has {shown}; supported documents end in "
            f"{', '.join(SUPPORTED_SUFFIXES)}. Convert it to one of these and upload it again."
        )
    deadline = _Deadline(filename)
    pages = reader(path, filename, deadline)
    return _assemble(pages, MEDIA_TYPES[suffix], filename)


class _Deadline:
    def __init__(self, filename: str):
        self.filename = filename
        self.until = time.monotonic() + MAX_SECONDS

    def check(self) -> None:
        if time.monotonic() > self.until:
            raise UnreadableDocument(
                f"Reading {self.filename} took over {MAX_SECONDS:.0f} s and was given up; "
                "split it into smaller documents."
            )


def normalize(text: str) -> str:
    """NFC, one kind of line break, no control characters but tab and newline."""
    return unicodedata.normalize("NFC", _CONTROL.sub("", _LINE_BREAKS.sub("\n", text)))


def _assemble(pages: list[_Page], media_type: str, filename: str) -> DocumentText:
    if len(pages) > MAX_PAGES:
        raise _too_many_pages(filename, len(pages))
    parts: list[str] = []
    spans: list[PageSpan] = []
    offset = 0
    for number, page in enumerate(pages, start=1):
        text = normalize(page.text).strip("\n")
        if number < len(pages):
            text += PAGE_SEPARATOR
        offset += len(text)
        if offset > MAX_CHARS:
            raise _too_long(filename)
        spans.append(PageSpan(number, page.label, offset - len(text), offset))
        parts.append(text)
    text = "".join(parts)
    if not text.strip():
        raise UnreadableDocument(
            f"{filename} holds no text; check that it is the file you meant to upload."
        )
    return DocumentText(text=text, pages=spans, media_type=media_type)


def _too_long(filename: str) -> UnreadableDocument:
    return UnreadableDocument(
        f"{filename} holds more than {MAX_CHARS:,} characters of text; "
        "split it into smaller documents."
    )


def _too_many_pages(filename: str, count: int) -> UnreadableDocument:
    return UnreadableDocument(
        f"{filename} has {count:,} pages, sheets or slides; the most one document may have "
        f"is {MAX_PAGES:,}. Split it into smaller documents."
    )


def _corrupt(filename: str, kind: str, error: BaseException) -> UnreadableDocument:
    return UnreadableDocument(
        f"{filename} cannot be read as {kind} ({type(error).__name__}: {str(error)[:200]}); "
        f"check that it is a valid {kind} file, save it again, and upload it again."
    )


# -- text formats ----------------------------------------------------------------------------


def _read_text(path: Path, filename: str) -> str:
    with path.open("rb") as source:
        data = source.read(MAX_TEXT_BYTES + 1)
    if len(data) > MAX_TEXT_BYTES:
        raise _too_long(filename)
    for encoding in ("utf-8-sig", "utf-8"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as error:
            failure = error
    raise UnreadableDocument(
        f"{filename} is not UTF-8 text (byte {failure.start:,} cannot be decoded); "
        "save it as UTF-8 and upload it again."
    )


def _plain(path: Path, filename: str, deadline: _Deadline) -> list[_Page]:
    return [_Page("text", _read_text(path, filename))]


def _html(path: Path, filename: str, deadline: _Deadline) -> list[_Page]:
    text = _read_text(path, filename)
    try:
        # markdownify walks the tree without fetching anything the page refers to.
        markdown = _markdown(text)
    except Exception as error:
        raise _corrupt(filename, "HTML", error) from error
    return [_Page("text", markdown)]


def _csv(path: Path, filename: str, deadline: _Deadline) -> list[_Page]:
    """Each row becomes a paragraph of `header: value` lines.

    A chunk of a Markdown table past its first rows loses the header, so its numbers lose their
    meaning; a row that names its columns stays meaningful in whichever chunk it lands.
    """
    text = _read_text(path, filename)
    try:
        dialect: Any = csv.Sniffer().sniff(text[:16_384], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    previous_limit = csv.field_size_limit(MAX_FIELD_CHARS)
    try:
        rows = csv.reader(io.StringIO(text, newline=""), dialect)
        header = next(rows, [])
        return [_Page("text", "\n\n".join(_records(header, rows, deadline)))]
    except csv.Error as error:
        raise _corrupt(filename, "CSV", error) from error
    finally:
        csv.field_size_limit(previous_limit)


def _records(header: list[str], rows: Iterator[list[Any]], deadline: _Deadline) -> Iterator[str]:
    names = [str(name).strip() for name in header]
    for number, row in enumerate(rows):
        if number % 10_000 == 0:
            deadline.check()
        lines = []
        for column, value in enumerate(row):
            shown = "" if value is None else str(value).strip()
            if not shown:
                continue
            name = names[column] if column < len(names) and names[column] else ""
            lines.append(f"{name}: {shown}" if name else shown)
        if lines:
            yield "\n".join(lines)


def _jsonl(path: Path, filename: str, deadline: _Deadline) -> list[_Page]:
    """Each record becomes a paragraph of `key: value` lines (nested keys joined by dots)."""
    text = _read_text(path, filename)
    paragraphs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if number % 10_000 == 0:
            deadline.check()
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as error:
            raise UnreadableDocument(
                f"{filename} line {number:,} is not JSON ({str(error)[:200]}); "
                "each line of a JSONL file holds one JSON value."
            ) from None
        lines = [f"{key}: {value}" if key else value for key, value in _flatten(record, "")]
        if lines:
            paragraphs.append("\n".join(lines))
    return [_Page("text", "\n\n".join(paragraphs))]


def _flatten(value: Any, key: str) -> Iterator[tuple[str, str]]:
    # An explicit stack: a deeply nested record must not exhaust Python's recursion.
    stack = [(key, value)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            prefix = f"{key}." if key else ""
            stack.extend((f"{prefix}{name}", item) for name, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((key, item) for item in reversed(value))
        elif isinstance(value, str):
            if value.strip():
                yield key, value.strip()
        elif value is not None:
            yield key, json.dumps(value)


# -- PDF -------------------------------------------------------------------------------------


def _pdf(path: Path, filename: str, deadline: _Deadline) -> list[_Page]:
    """pypdf's text of each page.

    markitdown reads a PDF with pdfminer as one stream (pages marked only by form feeds) after
    a pdfplumber pass over every page: on a 40-page text PDF it took 9 s against pypdf's
    0.2 s, doubled the spaces between words and made every line a paragraph. pypdf gives each
    page's text directly, in reading order, with single spaces.
    """
    import pypdf
    from pypdf.errors import FileNotDecryptedError, PyPdfError

    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted and not _opens_without_password(reader):
            raise UnreadableDocument(
                f"{filename}: the PDF is password-protected; remove the password and upload "
                "it again."
            )
        count = len(reader.pages)
        if count > MAX_PAGES:
            raise _too_many_pages(filename, count)
        pages = []
        size = 0
        for number, page in enumerate(reader.pages, start=1):
            deadline.check()
            text = page.extract_text() or ""
            size += len(text)
            if size > MAX_CHARS:
                raise _too_long(filename)
            pages.append(_Page(f"page {number}", text))
    except UnreadableDocument:
        raise
    except FileNotDecryptedError:
        raise UnreadableDocument(
            f"{filename}: the PDF is password-protected; remove the password and upload it again."
        ) from None
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, RecursionError) as error:
        raise _corrupt(filename, "PDF", error) from error
    if pages and not any(page.text.strip() for page in pages):
        raise UnreadableDocument(
            f"{filename} has scanned pages without text; run OCR first (for example "
            "`ocrmypdf in.pdf out.pdf`) and upload the result."
        )
    return pages


def _opens_without_password(reader: Any) -> bool:
    """True for a PDF encrypted with an empty user password (only editing is restricted)."""
    from pypdf.errors import PyPdfError

    try:
        return bool(reader.decrypt(""))
    except (PyPdfError, NotImplementedError, ValueError):
        return False


# -- the zip formats -------------------------------------------------------------------------


def _check_zip(path: Path, filename: str, kind: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise _corrupt(filename, kind, error) from error
    if len(members) > MAX_ZIP_MEMBERS:
        raise UnreadableDocument(
            f"{filename} holds {len(members):,} parts; a {kind} file may hold at most "
            f"{MAX_ZIP_MEMBERS:,}. Save it again or split it."
        )
    total = sum(member.file_size for member in members)
    if total > MAX_UNZIPPED_BYTES:
        raise UnreadableDocument(
            f"{filename} unpacks to {total / 1e6:,.0f} MB; a {kind} file may unpack to at most "
            f"{MAX_UNZIPPED_BYTES / 1e6:,.0f} MB. Split it or remove large embedded media."
        )


def _guarded(kind: str, read: Callable[[Path, str, _Deadline], list[_Page]]):
    def reader(path: Path, filename: str, deadline: _Deadline) -> list[_Page]:
        _check_zip(path, filename, kind)
        try:
            return read(path, filename, deadline)
        except UnreadableDocument:
            raise
        except Exception as error:
            raise _corrupt(filename, kind, error) from error

    return reader


def _docx(path: Path, filename: str, deadline: _Deadline) -> list[_Page]:
    """mammoth's HTML (headings, lists and tables kept) turned into Markdown.

    mammoth is called directly rather than through markitdown's DOCX converter, whose XML
    pre-pass rewrites the document and then fails on ordinary files (python-docx's own).
    Images are left out without being decoded, and external files are never opened.
    """
    import mammoth  # type: ignore[import-untyped]

    no_images = mammoth.images.img_element(lambda image: {"src": ""})
    with path.open("rb") as source:
        html = mammoth.convert_to_html(
            source, convert_image=no_images, external_file_access=False
        ).value
    return [_Page("text", _markdown(html))]


def _markdown(html: str) -> str:
    from markitdown.converters import HtmlConverter

    # Links keep their text and images go: addresses only add noise to retrieval.
    return HtmlConverter().convert_string(html, strip=["a", "img"]).markdown


def _xlsx(path: Path, filename: str, deadline: _Deadline) -> list[_Page]:
    """One page per sheet: the sheet's name as a heading, then each row as `header: value`
    lines (the first non-empty row is the header), like CSV."""
    import openpyxl  # type: ignore[import-untyped]

    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        if len(workbook.sheetnames) > MAX_PAGES:
            raise _too_many_pages(filename, len(workbook.sheetnames))
        pages = []
        size = 0
        for sheet in workbook.worksheets:
            deadline.check()
            rows = (
                list(row)
                for row in sheet.iter_rows(values_only=True)
                if any(v is not None and str(v).strip() for v in row)
            )
            header = [_cell(v) for v in next(rows, [])]
            body = list(_bounded(_records(header, rows, deadline), size, filename))
            lines = [f"# {sheet.title}"]
            if header and not body:
                lines.append(" | ".join(h for h in header if h))
            text = "\n\n".join(lines + body)
            size += len(text)
            pages.append(_Page(f"sheet {sheet.title}", text))
        return pages
    finally:
        workbook.close()


def _cell(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _bounded(paragraphs: Iterator[str], size: int, filename: str) -> Iterator[str]:
    for paragraph in paragraphs:
        size += len(paragraph) + 2
        if size > MAX_CHARS:
            raise _too_long(filename)
        yield paragraph


def _pptx(path: Path, filename: str, deadline: _Deadline) -> list[_Page]:
    """One page per slide: its title as a heading, the text of its shapes and tables, then
    its speaker notes."""
    import pptx

    presentation = pptx.Presentation(str(path))
    slides = list(presentation.slides)
    if len(slides) > MAX_PAGES:
        raise _too_many_pages(filename, len(slides))
    pages = []
    size = 0
    for number, slide in enumerate(slides, start=1):
        deadline.check()
        title_shape = slide.shapes.title
        title = title_shape.text_frame.text.strip() if title_shape is not None else ""
        title_id = title_shape.shape_id if title_shape is not None else None
        blocks = [f"# {title}"] if title else []
        for shape in _shapes(slide.shapes):
            if shape.shape_id == title_id:
                continue
            blocks.extend(_shape_text(shape))
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = slide.notes_slide.notes_text_frame.text.strip()
            if notes:
                blocks.append(f"Notes: {notes}")
        text = "\n\n".join(block for block in blocks if block.strip())
        size += len(text)
        if size > MAX_CHARS:
            raise _too_long(filename)
        pages.append(_Page(f"slide {number}", text))
    return pages


def _shapes(shapes: Any) -> Iterator[Any]:
    """The shapes of a slide in order, those inside groups included."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    stack = list(reversed(list(shapes)))
    while stack:
        shape = stack.pop()
        if getattr(shape, "shape_type", None) == MSO_SHAPE_TYPE.GROUP:
            stack.extend(reversed(list(shape.shapes)))
        else:
            yield shape


def _shape_text(shape: Any) -> list[str]:
    if getattr(shape, "has_table", False) and shape.has_table:
        rows = [[cell.text.strip() for cell in row.cells] for row in shape.table.rows]
        if not rows:
            return []
        return list(_records(rows[0], iter(rows[1:]), _Deadline("")))
    if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
        return [shape.text_frame.text.strip()]
    return []


_READERS: dict[str, Callable[[Path, str, _Deadline], list[_Page]]] = {
    ".pdf": _pdf,
    ".docx": _guarded("DOCX", _docx),
    ".pptx": _guarded("PPTX", _pptx),
    ".xlsx": _guarded("XLSX", _xlsx),
    ".html": _html,
    ".htm": _html,
    ".md": _plain,
    ".markdown": _plain,
    ".txt": _plain,
    ".csv": _csv,
    ".jsonl": _jsonl,
}
