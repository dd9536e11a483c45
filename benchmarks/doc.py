"""Refresh one `## ` section of docs/benchmarks.md (appended when missing)."""

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(head: str, body: str) -> None:
    head = head.rstrip("\n") + "\n"
    text = DOC.read_text()
    section = head + "\n" + body.rstrip("\n") + "\n"
    if head in text:
        start = text.index(head)
        end = text.find("\n## ", start + len(head))
        text = text[:start] + section + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)
