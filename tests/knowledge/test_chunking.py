"""Chunks: exact spans of the document's text, within the token budget, at natural boundaries,
never across a page, with the Markdown heading path for the markdown splitter."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneyard.errors import Invalid
from tuneyard.knowledge.chunking import Chunk, ChunkSettings, approx_tokens, split
from tuneyard.knowledge.documents import DocumentText, PageSpan

pytestmark = pytest.mark.nodb


def _text(text: str, media_type: str = "text/plain") -> DocumentText:
    return DocumentText(text=text, pages=[PageSpan(1, "text", 0, len(text))], media_type=media_type)


def _paged(*pages: str) -> DocumentText:
    text = "\n\n".join(pages)
    spans, offset = [], 0
    for number, page in enumerate(pages, start=1):
        end = len(text) if number == len(pages) else offset + len(page) + 2
        spans.append(PageSpan(number, f"page {number}", offset, end))
        offset = end
    return DocumentText(text=text, pages=spans, media_type="application/pdf")


def _assert_exact(document: DocumentText, chunks: list[Chunk]) -> None:
    assert [chunk.ordinal for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == document.text[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip() and chunk.text


def test_approx_tokens_counts_words_and_punctuation():
    assert approx_tokens("Hello, world! It's 2024.") == 9
    assert approx_tokens("   ") == 0
    # A long word counts as several tokens, as subword tokenizers cut it.
    assert approx_tokens("a" * 35) == 4


class TestSettings:
    def test_defaults_are_valid(self):
        assert ChunkSettings().check() == ChunkSettings("recursive", 256, 32)

    @pytest.mark.parametrize(
        ("values", "message"),
        [
            ({"splitter": "semantic"}, "use one of recursive, markdown"),
            ({"size": 16}, "from 32 to 4096"),
            ({"size": 5000}, "from 32 to 4096"),
            ({"size": True}, "from 32 to 4096"),
            ({"size": 64, "overlap": 33}, "from 0 to half the chunk size \\(32\\)"),
            ({"overlap": -1}, "from 0 to half"),
        ],
    )
    def test_out_of_range_values_say_what_to_use(self, values, message):
        with pytest.raises(Invalid, match=message):
            ChunkSettings(**values).check()


class TestRecursive:
    def test_short_paragraphs_share_a_chunk_and_whitespace_stays_outside(self):
        document = _text("\n\n  First paragraph here.\n\nSecond one.  \n\n")

        chunks = split(document, ChunkSettings(size=32, overlap=0), approx_tokens)

        assert [chunk.text for chunk in chunks] == ["First paragraph here.\n\nSecond one."]
        assert (chunks[0].start, chunks[0].page, chunks[0].page_label) == (4, 1, "text")
        assert chunks[0].heading is None

    def test_chunks_end_at_paragraphs_before_sentences(self):
        paragraphs = [" ".join(f"p{p}w{w}" for w in range(20)) + "." for p in range(6)]
        document = _text("\n\n".join(paragraphs))

        chunks = split(document, ChunkSettings(size=50, overlap=0), approx_tokens)

        _assert_exact(document, chunks)
        assert [chunk.text for chunk in chunks] == [
            "\n\n".join(paragraphs[0:2]),
            "\n\n".join(paragraphs[2:4]),
            "\n\n".join(paragraphs[4:6]),
        ]

    def test_a_long_paragraph_is_cut_at_sentences_with_overlap(self):
        sentences = [f"Sentence {n} has exactly seven tokens." for n in range(40)]
        document = _text(" ".join(sentences))

        chunks = split(document, ChunkSettings(size=64, overlap=14), approx_tokens)

        _assert_exact(document, chunks)
        assert all(approx_tokens(chunk.text) <= 64 for chunk in chunks)
        for previous, chunk in zip(chunks, chunks[1:], strict=False):
            # Each chunk opens with the last two sentences of the one before.
            assert chunk.start < previous.end
            assert previous.text.endswith(document.text[chunk.start : previous.end])
            assert re.fullmatch(
                r"(Sentence \d+ has exactly seven tokens\. ?){2}",
                document.text[chunk.start : previous.end],
            )
        assert chunks[-1].text.endswith("Sentence 39 has exactly seven tokens.")

    def test_a_word_longer_than_a_chunk_is_cut_by_characters(self):
        document = _text("start " + "x" * 1000 + " end")

        chunks = split(document, ChunkSettings(size=32, overlap=0), approx_tokens)

        _assert_exact(document, chunks)
        assert all(approx_tokens(chunk.text) <= 32 for chunk in chunks)
        assert "".join(chunk.text for chunk in chunks).replace(" ", "") == (
            "start" + "x" * 1000 + "end"
        )

    def test_no_chunk_crosses_a_page_and_each_names_its_page(self):
        document = _paged("Alpha beta gamma.", "Delta epsilon.", "Zeta eta theta.")

        chunks = split(document, ChunkSettings(size=256, overlap=0), approx_tokens)

        assert [(c.text, c.page, c.page_label) for c in chunks] == [
            ("Alpha beta gamma.", 1, "page 1"),
            ("Delta epsilon.", 2, "page 2"),
            ("Zeta eta theta.", 3, "page 3"),
        ]

    def test_the_given_token_counter_decides(self):
        # A counter that sees every character as a token: chunks hold at most 40 characters.
        document = _text("one two three four five six seven eight nine ten " * 10)

        chunks = split(document, ChunkSettings(size=40, overlap=8), len)

        _assert_exact(document, chunks)
        assert all(len(chunk.text) <= 40 for chunk in chunks)
        assert chunks[-1].text.endswith("nine ten")

    def test_a_text_of_only_whitespace_has_no_chunks(self):
        assert split(_text(" \n\n\t "), ChunkSettings(), approx_tokens) == []


class TestMarkdown:
    def test_sections_carry_their_heading_path(self):
        text = (
            "Preface line.\n\n# Guide\n\nIntro.\n\n## Setup\n\nSetup text.\n\n"
            "### Install\n\nRun pip.\n\n```\n# not a heading\n```\n\n## Use\n\nUse it."
        )
        document = _text(text, "text/markdown")

        chunks = split(document, ChunkSettings(splitter="markdown"), approx_tokens)

        _assert_exact(document, chunks)
        assert [(chunk.heading, chunk.text) for chunk in chunks] == [
            (None, "Preface line."),
            ("Guide", "# Guide\n\nIntro."),
            ("Guide > Setup", "## Setup\n\nSetup text."),
            ("Guide > Setup > Install", "### Install\n\nRun pip.\n\n```\n# not a heading\n```"),
            ("Guide > Use", "## Use\n\nUse it."),
        ]

    def test_a_heading_path_continues_onto_the_next_page(self):
        document = _paged("# Costs\n\nRent is high.", "Power is cheap.")

        chunks = split(document, ChunkSettings(splitter="markdown"), approx_tokens)

        assert [(c.heading, c.page, c.text) for c in chunks] == [
            ("Costs", 1, "# Costs\n\nRent is high."),
            ("Costs", 2, "Power is cheap."),
        ]

    def test_the_recursive_splitter_ignores_headings(self):
        document = _text("# One\n\nA.\n\n# Two\n\nB.")

        chunks = split(document, ChunkSettings(), approx_tokens)

        assert [(c.heading, c.text) for c in chunks] == [(None, document.text)]


_pieces = st.one_of(
    st.text(alphabet="abcdefghij", min_size=1, max_size=14),
    st.sampled_from([" ", "  ", "\n", "\n\n", "\n \n", ".", ". ", "! ", "\t", ",", "。", "# "]),
    st.text(min_size=1, max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(_pieces, max_size=300),
    splitter=st.sampled_from(["recursive", "markdown"]),
    size=st.integers(min_value=32, max_value=80),
    overlap_share=st.floats(min_value=0, max_value=0.5),
    page_cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=4),
    # len sees the whitespace between pieces as tokens: the joined text counts more than
    # its pieces, which the splitter must notice.
    count=st.sampled_from([approx_tokens, len]),
)
def test_chunks_are_exact_ordered_within_size_and_cover_all_text(
    pieces, splitter, size, overlap_share, page_cuts, count
):
    text = "".join(pieces)
    cuts = sorted({0, *(cut for cut in page_cuts if cut < len(text))})
    pages = [
        PageSpan(n, f"page {n}", start, end)
        for n, (start, end) in enumerate(zip(cuts, [*cuts[1:], len(text)], strict=True), 1)
    ]
    document = DocumentText(text=text, pages=pages, media_type="text/markdown")
    chunk_settings = ChunkSettings(splitter, size, min(int(size * overlap_share), size // 2))

    chunks = split(document, chunk_settings, count)

    covered = [False] * len(text)
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text.strip() == chunk.text != ""
        assert count(chunk.text) <= size
        page = document.page_at(chunk.start)
        assert (chunk.page, chunk.page_label) == (page.number, page.label)
        assert chunk.end <= page.end
        for offset in range(chunk.start, chunk.end):
            covered[offset] = True
    assert all(a.start < b.start for a, b in zip(chunks, chunks[1:], strict=False))
    assert [c.end for c in chunks] == sorted(c.end for c in chunks)
    assert all(covered[i] for i, char in enumerate(text) if not char.isspace())
