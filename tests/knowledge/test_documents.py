"""Documents of every supported format, made by the libraries that write them, read into text
with their pages, sheets and slides; and the documents that cannot be read, refused clearly."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tuneyard.knowledge import documents
from tuneyard.knowledge.documents import (
    SUPPORTED_SUFFIXES,
    DocumentText,
    PageSpan,
    UnreadableDocument,
    convert,
)

pytestmark = pytest.mark.nodb


def _pdf(path: Path, pages: list[str | None], password: str | None = None) -> Path:
    """A PDF with one page per entry: that text, or (None) only a picture."""
    from fpdf import FPDF
    from PIL import Image

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text is None:
            pdf.image(Image.new("RGB", (40, 20), "gray"), x=10, y=10, w=80)
        else:
            pdf.multi_cell(0, 10, text)
    if password is not None:
        pdf.set_encryption(owner_password="owner-secret", user_password=password)
    pdf.output(str(path))
    return path


def _page_texts(document: DocumentText) -> list[str]:
    return [document.text[page.start : page.end].strip() for page in document.pages]


def _assert_covers(document: DocumentText) -> None:
    ends = [page.start for page in document.pages[1:]] + [len(document.text)]
    assert document.pages[0].start == 0
    assert [page.end for page in document.pages] == ends


class TestPdf:
    def test_each_page_is_a_span_with_its_own_text(self, tmp_path):
        path = _pdf(tmp_path / "f.pdf", ["Apples grow on trees.", "Pears ripen in autumn."])

        document = convert(path, "fruit.pdf")

        assert document.media_type == "application/pdf"
        assert [page.label for page in document.pages] == ["page 1", "page 2"]
        assert _page_texts(document) == ["Apples grow on trees.", "Pears ripen in autumn."]
        _assert_covers(document)
        assert document.page_at(document.text.index("Pears")).number == 2
        assert document.page_at(0).label == "page 1"

    def test_a_page_with_only_a_picture_keeps_its_place(self, tmp_path):
        path = _pdf(tmp_path / "f.pdf", [None, "Text on the second page."])

        document = convert(path, "mixed.pdf")

        assert _page_texts(document) == ["", "Text on the second page."]
        assert document.page_at(document.text.index("Text")).label == "page 2"

    def test_a_password_protected_pdf_is_refused_with_what_to_do(self, tmp_path):
        path = _pdf(tmp_path / "f.pdf", ["Secret plans."], password="open-sesame")

        with pytest.raises(UnreadableDocument, match="password-protected; remove the password"):
            convert(path, "secret.pdf")

    def test_a_pdf_with_only_scanned_pages_asks_for_ocr(self, tmp_path):
        path = _pdf(tmp_path / "f.pdf", [None, None])

        with pytest.raises(UnreadableDocument, match="without text; run OCR first"):
            convert(path, "scan.pdf")

    def test_a_corrupt_pdf_is_refused(self, tmp_path):
        path = tmp_path / "f.pdf"
        path.write_bytes(b"%PDF-1.7\n" + b"\x00garbage" * 100)

        with pytest.raises(UnreadableDocument, match="cannot be read as PDF"):
            convert(path, "broken.pdf")

    def test_more_pages_than_allowed_are_refused(self, tmp_path, monkeypatch):
        monkeypatch.setattr(documents, "MAX_PAGES", 1)
        path = _pdf(tmp_path / "f.pdf", ["One.", "Two."])

        with pytest.raises(UnreadableDocument, match="has 2 pages.*at most|most one document"):
            convert(path, "long.pdf")


class TestOfficeFormats:
    def test_docx_keeps_headings_paragraphs_and_tables(self, tmp_path):
        import docx

        made = docx.Document()
        made.add_heading("Setup", level=1)
        made.add_paragraph("Install the tool with pip.")
        table = made.add_table(rows=2, cols=2)
        for (row, column), text in {(0, 0): "setting", (0, 1): "value", (1, 0): "port"}.items():
            table.cell(row, column).text = text
        table.cell(1, 1).text = "8080"
        made.save(tmp_path / "f.docx")

        document = convert(tmp_path / "f.docx", "guide.docx")

        assert [page.label for page in document.pages] == ["text"]
        assert document.text.startswith("# Setup\n\nInstall the tool with pip.")
        assert "| port | 8080 |" in document.text

    def test_xlsx_gives_one_span_per_sheet_with_rows_named_by_header(self, tmp_path):
        import openpyxl

        book = openpyxl.Workbook()
        sales = book.active
        sales.title = "Sales"
        sales.append(["region", "amount"])
        sales.append(["North", 12])
        costs = book.create_sheet("Costs")
        costs.append(["item", "cost"])
        costs.append(["rent", 500])
        book.save(tmp_path / "f.xlsx")

        document = convert(tmp_path / "f.xlsx", "books.xlsx")

        assert [page.label for page in document.pages] == ["sheet Sales", "sheet Costs"]
        assert _page_texts(document) == [
            "# Sales\n\nregion: North\namount: 12",
            "# Costs\n\nitem: rent\ncost: 500",
        ]

    def test_pptx_gives_one_span_per_slide_with_title_body_and_notes(self, tmp_path):
        import pptx

        deck = pptx.Presentation()
        for title, body, notes in [
            ("Intro", "Tuneyard manages models", "Greet the room"),
            ("Deploy", "Ship to Ollama", ""),
        ]:
            slide = deck.slides.add_slide(deck.slide_layouts[1])
            slide.shapes.title.text = title
            slide.placeholders[1].text = body
            if notes:
                slide.notes_slide.notes_text_frame.text = notes
        deck.save(tmp_path / "f.pptx")

        document = convert(tmp_path / "f.pptx", "deck.pptx")

        assert [page.label for page in document.pages] == ["slide 1", "slide 2"]
        assert _page_texts(document) == [
            "# Intro\n\nTuneyard manages models\n\nNotes: Greet the room",
            "# Deploy\n\nShip to Ollama",
        ]

    def test_a_zip_bomb_is_refused_before_it_is_unpacked(self, tmp_path):
        path = tmp_path / "f.docx"
        zero = bytes(1 << 20)
        with (
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
            archive.open("word/document.xml", "w", force_zip64=True) as member,
        ):
            for _ in range(201):
                member.write(zero)

        assert path.stat().st_size < 1_000_000
        with pytest.raises(UnreadableDocument, match="unpacks to 211 MB.*at most 200 MB"):
            convert(path, "bomb.docx")

    def test_a_file_that_is_not_a_zip_is_refused(self, tmp_path):
        path = tmp_path / "f.xlsx"
        path.write_text("name,amount\n")

        with pytest.raises(UnreadableDocument, match="cannot be read as XLSX"):
            convert(path, "sheet.xlsx")


class TestTextFormats:
    def test_html_keeps_text_and_headings_without_scripts_or_addresses(self, tmp_path):
        (tmp_path / "f.html").write_text(
            "<html><head><script>steal()</script><style>p{}</style></head><body>"
            "<h1>Hello</h1><p>Read <a href='http://example.com/x'>the guide</a>.</p>"
            "<img src='http://example.com/x.png'></body></html>"
        )

        document = convert(tmp_path / "f.html", "page.HTM")

        assert document.media_type == "text/html"
        assert document.text == "# Hello\n\nRead the guide."

    def test_markdown_and_text_are_kept_as_written(self, tmp_path):
        (tmp_path / "f").write_text("# Title\n\nBody text.\n")

        for name, media_type in [("a.md", "text/markdown"), ("a.txt", "text/plain")]:
            document = convert(tmp_path / "f", name)
            assert document.text == "# Title\n\nBody text."
            assert document.media_type == media_type
            assert document.pages == [PageSpan(1, "text", 0, len(document.text))]

    def test_text_is_normalized_without_control_characters(self, tmp_path):
        (tmp_path / "f").write_bytes("\ufeffcafe\u0301\x00 one\r\ntwo\rthree\x07\tend".encode())

        document = convert(tmp_path / "f", "notes.txt")

        assert document.text == "caf\u00e9 one\ntwo\nthree\tend"

    def test_csv_rows_become_paragraphs_of_named_values(self, tmp_path):
        (tmp_path / "f.csv").write_text("name;city\nAda;London\nGrace;\n;New York\n")

        document = convert(tmp_path / "f.csv", "people.csv")

        assert document.text == "name: Ada\ncity: London\n\nname: Grace\n\ncity: New York"

    def test_jsonl_records_become_paragraphs_of_keys_and_values(self, tmp_path):
        lines = [
            {"question": "What is it?", "answer": {"text": "A platform", "votes": 3}},
            {"question": "Who uses it?", "tags": ["teams", "labs"], "empty": None},
        ]
        (tmp_path / "f.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")

        document = convert(tmp_path / "f.jsonl", "faq.jsonl")

        assert document.text == (
            "question: What is it?\nanswer.text: A platform\nanswer.votes: 3\n\n"
            "question: Who uses it?\ntags: teams\ntags: labs"
        )

    def test_a_broken_jsonl_line_is_named(self, tmp_path):
        (tmp_path / "f.jsonl").write_text('{"a": "b"}\n{"a": \n')

        with pytest.raises(UnreadableDocument, match="line 2 is not JSON"):
            convert(tmp_path / "f.jsonl", "faq.jsonl")

    def test_text_that_is_not_utf8_is_refused(self, tmp_path):
        (tmp_path / "f.txt").write_bytes("Caf\u00e9 cr\u00e8me".encode("latin-1"))

        with pytest.raises(UnreadableDocument, match="not UTF-8 text.*save it as UTF-8"):
            convert(tmp_path / "f.txt", "menu.txt")

    def test_an_empty_document_is_refused(self, tmp_path):
        (tmp_path / "f.md").write_text(" \n\n\t\n")

        with pytest.raises(UnreadableDocument, match="holds no text"):
            convert(tmp_path / "f.md", "empty.md")

    def test_text_longer_than_allowed_is_refused(self, tmp_path, monkeypatch):
        monkeypatch.setattr(documents, "MAX_CHARS", 100)
        (tmp_path / "f.txt").write_text("word " * 30)

        with pytest.raises(UnreadableDocument, match="more than 100 characters"):
            convert(tmp_path / "f.txt", "long.txt")


def test_an_unsupported_suffix_lists_the_supported_ones(tmp_path):
    (tmp_path / "f.doc").write_bytes(b"\xd0\xcf\x11\xe0")

    with pytest.raises(UnreadableDocument) as refused:
        convert(tmp_path / "f.doc", "old.doc")

    assert "'.doc'" in refused.value.message
    assert all(suffix in refused.value.message for suffix in SUPPORTED_SUFFIXES)
    assert refused.value.status == 422
