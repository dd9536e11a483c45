"""Run the course: execute each part's ```python blocks in order, in one namespace, and write it as HTML with
every cell's printed output and figures.

    python docs/course/run.py                      # every part, HTML into docs/course/html/
    python docs/course/run.py docs/course/1-pipeline.md --out /tmp/course

A cell shows a figure by calling `show(image_or_figure, caption)`: a PIL image, or a matplotlib figure (the
`docs` extra). Any error stops the run with the part's name and the cell's number. tests/test_course.py runs
every part through `run` (no HTML).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import io
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BLOCK = re.compile(r"```python\n(.*?)```\n", re.S)


class CellError(Exception):
    pass


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    if hasattr(figure, "savefig"):  # matplotlib
        figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    else:
        figure.save(buffer, format="png")
    return buffer.getvalue()


def run(path: str | Path) -> list[tuple[str, str, list[tuple[bytes, str]]]]:
    """Execute a part. Returns [(prose or code, printed output, [(png, caption)])], prose with empty outputs."""
    path = Path(path)
    text, pieces, namespace, at = path.read_text(encoding="utf-8"), [], {"__name__": "__course__"}, 0
    figures: list[tuple[bytes, str]] = []
    namespace["show"] = lambda figure, caption="": figures.append((_png(figure), caption))
    for number, match in enumerate(BLOCK.finditer(text), 1):
        pieces.append((text[at:match.start()], "", []))
        figures.clear()
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(match.group(1), f"{path.name} cell {number}", "exec"), namespace)
        except Exception as e:
            raise CellError(f"{path.name}, cell {number}: {type(e).__name__}: {e}") from e
        pieces.append(("```python\n" + match.group(1), printed.getvalue(), list(figures)))
        at = match.end()
    pieces.append((text[at:], "", []))
    return pieces


def to_html(title: str, pieces) -> str:
    """A page: prose (headings and paragraphs), code, output and figures."""
    out = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{max-width:52em;margin:2em auto;font-family:sans-serif;line-height:1.45}"
           "pre{background:#f4f4f4;padding:.6em;overflow-x:auto}pre.out{background:#fff;border-left:3px solid #8a8}"
           "figure{margin:.5em 0}img{image-rendering:pixelated;max-width:100%}</style>"]
    for source, printed, figures in pieces:
        if source.startswith("```python\n"):
            out.append(f"<pre>{html.escape(source[10:])}</pre>")
            if printed:
                out.append(f"<pre class='out'>{html.escape(printed)}</pre>")
            for png, caption in figures:
                data = base64.b64encode(png).decode()
                out.append(f"<figure><img src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)}"
                           f"</figcaption></figure>")
            continue
        for block in re.split(r"\n\s*\n", source.strip()):
            heading = re.match(r"(#+) (.*)", block)
            if heading:
                level = len(heading.group(1))
                out.append(f"<h{level}>{html.escape(heading.group(2))}</h{level}>")
            elif block:
                out.append(f"<p>{html.escape(block)}</p>")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="*", type=Path, help="Markdown parts (default: every docs/course/*.md)")
    ap.add_argument("--out", type=Path, default=HERE / "html", help="folder for the HTML pages")
    args = ap.parse_args(argv)
    parts = args.parts or sorted(p for p in HERE.glob("[0-9]-*.md"))
    args.out.mkdir(parents=True, exist_ok=True)
    for part in parts:
        try:
            pieces = run(part)
        except CellError as e:
            print(f"course: {e}", file=sys.stderr)
            return 1
        page = args.out / (part.stem + ".html")
        page.write_text(to_html(part.stem, pieces), encoding="utf-8")
        print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
