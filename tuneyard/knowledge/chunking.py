"""Cutting a document's text into chunks that fit the embedding model, each an exact span.

A chunk is never edited: its text is `document.text[start:end]`, so a citation can point at
the very characters it quotes. Both splitters cut at the strongest boundary that keeps a chunk
within its token budget (paragraph, then line, sentence, word, and a long word by characters),
never across a page, sheet or slide. Sentences are counted once and summed; each chunk is
counted once more as a whole, since a counter may see more in the joined text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from tuneyard.errors import Invalid
from tuneyard.knowledge.documents import DocumentText, PageSpan

SPLITTERS = ("recursive", "markdown")
MIN_SIZE = 32
MAX_SIZE = 4096

# Boundaries from strongest to weakest; a piece too long for a chunk is cut at the next one.
_BOUNDARIES = (
    re.compile(r"\n\s*\n"),  # paragraph
    re.compile(r"\n"),  # line
    re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])\s*"),  # sentence
    re.compile(r"\s+"),  # word
)
_SENTENCE, _WORD = 2, 3
_CHARACTERS = len(_BOUNDARIES)  # the level at which a single long word is cut by characters
# Tokenizers give a token for every few characters: a stretch this many times longer than the
# overlap left is not counted for it (being wrong only shortens the overlap).
_MOST_CHARS_PER_TOKEN = 12
# A long word counts as one token per ten characters, as subword tokenizers cut rare words.
_TOKEN = re.compile(r"\w{1,10}|[^\w\s]")
# An ATX heading (`## Install`); its optional closing hashes are dropped in `_headings`.
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+([^\n]*)", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)


def approx_tokens(text: str) -> int:
    """Words and punctuation marks: a tokenizer-free estimate of a text's token count."""
    return len(_TOKEN.findall(text))


@dataclass(frozen=True)
class ChunkSettings:
    splitter: Literal["recursive", "markdown"] = "recursive"
    size: int = 256  # the most tokens in a chunk
    overlap: int = 32  # tokens of a chunk's end that the next chunk repeats, < size

    def check(self) -> ChunkSettings:
        """These settings, or Invalid saying which value to change."""
        if self.splitter not in SPLITTERS:
            raise Invalid(
                f"Chunk splitter '{self.splitter}' is unknown; use one of {', '.join(SPLITTERS)}."
            )
        if not _is_int(self.size) or not MIN_SIZE <= self.size <= MAX_SIZE:
            raise Invalid(
                f"Chunk size {self.size!r} is out of range; give a whole number of tokens "
                f"from {MIN_SIZE} to {MAX_SIZE}."
            )
        if not _is_int(self.overlap) or not 0 <= self.overlap <= self.size // 2:
            raise Invalid(
                f"Chunk overlap {self.overlap!r} is out of range; give a whole number of tokens "
                f"from 0 to half the chunk size ({self.size // 2})."
            )
        return self


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    text: str  # == document.text[start:end] exactly
    start: int
    end: int
    page: int  # the number of the page where the chunk starts
    page_label: str
    heading: str | None  # the Markdown heading path ("Setup > Install"), markdown splitter


@dataclass
class _Piece:
    start: int
    end: int
    tokens: int
    level: int  # the strength of the boundary before it: 0 paragraph ... 4 inside a word


def split(
    document: DocumentText, settings: ChunkSettings, count_tokens: Callable[[str], int]
) -> list[Chunk]:
    """The document's chunks in order; each holds at most `settings.size` tokens."""
    settings.check()
    text = document.text
    packer = _Packer(text, settings.size, settings.overlap, count_tokens)
    sections: list[tuple[int, int, str | None]] = (
        _sections(text) if settings.splitter == "markdown" else [(0, len(text), None)]
    )
    chunks: list[Chunk] = []
    for start, end, heading, page in _regions(sections, document.pages):
        for chunk_start, chunk_end in packer.pack(start, end):
            chunks.append(
                Chunk(
                    ordinal=len(chunks),
                    text=text[chunk_start:chunk_end],
                    start=chunk_start,
                    end=chunk_end,
                    page=page.number,
                    page_label=page.label,
                    heading=heading,
                )
            )
    return chunks


def _regions(
    sections: list[tuple[int, int, str | None]], pages: list[PageSpan]
) -> Iterator[tuple[int, int, str | None, PageSpan]]:
    """The non-empty intersections of sections and pages, in order: no chunk crosses either."""
    section_index = page_index = 0
    while section_index < len(sections) and page_index < len(pages):
        start, end, heading = sections[section_index]
        page = pages[page_index]
        if max(start, page.start) < min(end, page.end):
            yield max(start, page.start), min(end, page.end), heading, page
        if end <= page.end:
            section_index += 1
        else:
            page_index += 1


class _Packer:
    def __init__(self, text: str, size: int, overlap: int, count: Callable[[str], int]):
        self.text = text
        self.size = size
        self.overlap = overlap
        self.count = count

    def pack(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """Spans of chunks over text[start:end]: pieces packed greedily, a full chunk ended at
        the strongest boundary in its second half, and the next chunk opened with the end of
        the previous one."""
        current: list[_Piece] = []
        tokens = 0
        carried = 0  # how many of the current pieces repeat the previous chunk's end
        for piece in self._pieces(start, end, 0, 0):
            while current and tokens + piece.tokens > self.size:
                span, current, carried = self._flush(current, carried, piece)
                tokens = sum(p.tokens for p in current)
                yield span
            current.append(piece)
            tokens += piece.tokens
        while len(current) > carried:
            span, current, carried = self._flush(current, carried, None)
            yield span

    def _flush(
        self, current: list[_Piece], carried: int, following: _Piece | None
    ) -> tuple[tuple[int, int], list[_Piece], int]:
        """The next chunk's span from the front of `current`, and the pieces (with how many
        of them are carried over) that open the chunk after it."""
        keep = self._fit(current, self._cut(current, carried, following))
        if keep <= carried:
            # The carried end of the previous chunk leaves no room: start without it.
            current, carried = current[carried:], 0
            keep = self._fit(current, self._cut(current, 0, following))
        emitted, rest = current[:keep], current[keep:]
        span = (emitted[0].start, emitted[-1].end)
        if following is None and not rest:
            return span, [], 0
        room = self.size - sum(p.tokens for p in rest)
        if following is not None:
            room -= following.tokens
        tail = self._tail(emitted, room)
        return span, tail + rest, len(tail)

    def _cut(self, current: list[_Piece], carried: int, following: _Piece | None) -> int:
        """How many of the current pieces the chunk keeps: all, unless a stronger boundary
        than the one before `following` lies in the chunk's second half."""
        if following is None:
            return len(current)
        best, best_level = len(current), following.level
        total = 0
        for index, piece in enumerate(current):
            if index > carried and piece.level < best_level and total * 2 >= self.size:
                best, best_level = index, piece.level
            total += piece.tokens
        return best

    def _fit(self, pieces: list[_Piece], keep: int) -> int:
        """How many of the first `keep` pieces fit in a chunk when counted as one text: the
        counter may see more tokens in the joined text than in its pieces (the whitespace
        between them, or a tokenizer's merges)."""
        while keep > 1:
            excess = self.count(self.text[pieces[0].start : pieces[keep - 1].end]) - self.size
            if excess <= 0:
                break
            dropped = 0
            while keep > 1 and dropped < excess:
                keep -= 1
                dropped += max(pieces[keep].tokens, 1)
        return keep

    def _tail(self, emitted: list[_Piece], room: int) -> list[_Piece]:
        """The end of the emitted chunk (at most `overlap` tokens, and what fits in `room`),
        as pieces; never from the chunk's first character, so chunks keep moving forward."""
        budget = min(self.overlap, room)
        tail: list[_Piece] = []
        if budget <= 0:
            return tail
        used = 0
        for index in range(len(emitted) - 1, -1, -1):
            piece = emitted[index]
            if index == 0 or used + piece.tokens > budget:
                tail[:0] = self._finer_tail(piece, budget - used)
                break
            tail.insert(0, piece)
            used += piece.tokens
        return tail

    def _finer_tail(self, piece: _Piece, budget: int) -> list[_Piece]:
        """The end of one piece, cut at lines, sentences or else words, within `budget`
        tokens, never from the piece's first character."""
        for level in range(1, _CHARACTERS):
            parts = list(self._segments(piece.start, piece.end, level))
            tail: list[_Piece] = []
            used = 0
            for part_start, part_end in reversed(parts[1:]):
                if part_end - part_start > (budget - used) * _MOST_CHARS_PER_TOKEN:
                    break  # surely over the budget: not worth counting
                tokens = self.count(self.text[part_start:part_end])
                if used + tokens > budget:
                    break
                tail.insert(0, _Piece(part_start, part_end, tokens, level))
                used += tokens
            if tail:
                return tail
        return []

    def _pieces(self, start: int, end: int, level: int, gap: int) -> Iterator[_Piece]:
        """The sentences of text[start:end] (a sentence longer than a chunk cut into runs of
        words), each with the boundary before it; `gap` is the boundary before the first.

        Only sentences and smaller are counted: a paragraph's tokens are the sum of its
        sentences', so each character is counted once, and the packer keeps a paragraph whole
        when it fits by preferring to end chunks at paragraph boundaries."""
        for index, (piece_start, piece_end) in enumerate(self._segments(start, end, level)):
            before = level if index else gap
            if level < _SENTENCE:
                yield from self._pieces(piece_start, piece_end, level + 1, before)
                continue
            tokens = self.count(self.text[piece_start:piece_end])
            if tokens <= self.size:
                yield _Piece(piece_start, piece_end, tokens, before)
            else:
                yield from self._word_runs(piece_start, piece_end, tokens, before)

    def _word_runs(self, start: int, end: int, tokens: int, gap: int) -> Iterator[_Piece]:
        """A sentence longer than a chunk, as runs of words of about an eighth of a chunk
        (counting every word alone would call the counter once per word)."""
        words = list(self._segments(start, end, _WORD))
        per_run = max(1, int(self.size / 8 / (tokens / len(words))))
        for first in range(0, len(words), per_run):
            run = words[first : first + per_run]
            run_start, run_end = run[0][0], run[-1][1]
            run_tokens = self.count(self.text[run_start:run_end])
            if run_tokens <= self.size:
                yield _Piece(run_start, run_end, run_tokens, gap)
                gap = _WORD
                continue
            for word_start, word_end in run:
                word_tokens = self.count(self.text[word_start:word_end])
                if word_tokens <= self.size or word_end - word_start == 1:
                    yield _Piece(word_start, word_end, word_tokens, gap)
                else:
                    yield from self._characters(word_start, word_end, word_tokens, gap)
                gap = _WORD

    def _characters(self, start: int, end: int, tokens: int, gap: int) -> Iterator[_Piece]:
        """A word longer than a chunk, cut into runs of characters that each fit; the length
        of each run is guessed from the characters per token seen so far."""
        per_token = (end - start) / max(tokens, 1)
        while start < end:
            length = max(1, int(per_token * self.size))
            while True:
                stop = min(end, start + length)
                count = self.count(self.text[start:stop])
                if count <= self.size or length == 1:
                    break
                length = max(1, min(length - 1, int(length * self.size / count)))
            yield _Piece(start, stop, count, gap)
            if count:
                per_token = (stop - start) / count
            gap = _CHARACTERS
            start = stop

    def _segments(self, start: int, end: int, level: int) -> Iterator[tuple[int, int]]:
        """The non-blank spans of text[start:end] between boundaries of `level`, stripped of
        surrounding whitespace."""
        text = self.text
        cursor = start
        for boundary in _BOUNDARIES[level].finditer(text, start, end):
            if boundary.end() == boundary.start() == cursor:
                continue
            span = _strip(text, cursor, boundary.start())
            if span:
                yield span
            cursor = boundary.end()
        span = _strip(text, cursor, end)
        if span:
            yield span


def _strip(text: str, start: int, end: int) -> tuple[int, int] | None:
    segment = text[start:end]
    stripped = segment.strip()
    if not stripped:
        return None
    leading = len(segment) - len(segment.lstrip())
    return start + leading, start + leading + len(stripped)


def _sections(text: str) -> list[tuple[int, int, str | None]]:
    """Spans that cover the text, each beginning at a Markdown heading (the first may begin
    before any), with the path of headings it sits under."""
    sections: list[tuple[int, int, str | None]] = []
    path: list[tuple[int, str]] = []
    cursor = 0
    for level, title, offset in _headings(text):
        if offset > cursor:
            sections.append((cursor, offset, _joined(path)))
        path = [(above, name) for above, name in path if above < level] + [(level, title)]
        cursor = offset
    sections.append((cursor, len(text), _joined(path)))
    return sections


def _joined(path: list[tuple[int, str]]) -> str | None:
    return " > ".join(title for _, title in path) or None


def _headings(text: str) -> list[tuple[int, str, int]]:
    """(level, title, offset) of every ATX heading outside fenced code blocks."""
    fenced: list[tuple[int, int]] = []
    opening: re.Match[str] | None = None
    for fence in _FENCE.finditer(text):
        if opening is None:
            opening = fence
        elif fence.group(1)[0] == opening.group(1)[0] and len(fence.group(1)) >= len(
            opening.group(1)
        ):
            fenced.append((opening.start(), fence.end()))
            opening = None
    if opening is not None:
        fenced.append((opening.start(), len(text)))
    headings = []
    fence_index = 0
    for match in _HEADING.finditer(text):
        while fence_index < len(fenced) and fenced[fence_index][1] <= match.start():
            fence_index += 1
        if fence_index < len(fenced) and fenced[fence_index][0] <= match.start():
            continue
        title = _heading_title(match.group(2))
        if title:
            headings.append((len(match.group(1)), title, match.start()))
    return headings


def _heading_title(line: str) -> str:
    """A heading's text without the closing hashes (`## Install ##` -> "Install")."""
    title = line.strip(" \t")
    unclosed = title.rstrip("#")
    if unclosed != title and (not unclosed or unclosed[-1] in " \t"):
        title = unclosed.rstrip(" \t")
    return title
