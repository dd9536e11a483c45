"""docs/course: every part runs, cell by cell, offline on sumie-tiny; part 3's own loop draws the pipeline's image
(its cell asserts it)."""

import importlib.util
from pathlib import Path

import pytest

COURSE = Path(__file__).resolve().parent.parent / "docs" / "course"


def runner():
    spec = importlib.util.spec_from_file_location("course_run", COURSE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("part", sorted(p.name for p in COURSE.glob("[0-9]-*.md")))
def test_every_cell_of_the_course_runs(part, tmp_path):
    course = runner()
    pieces = course.run(COURSE / part)
    cells = [p for p in pieces if p[0].startswith("```python")]
    assert len(cells) >= 5 and any(figures for _, _, figures in cells)
    page = course.to_html(part, pieces)
    assert page.count("<img") == sum(len(f) for _, _, f in cells) and "<h1>" in page


def test_a_failing_cell_names_its_part_and_number(tmp_path):
    course = runner()
    (tmp_path / "9-broken.md").write_text("# Broken\n\n```python\nx = 1\n```\n\n```python\n1 / 0\n```\n")
    with pytest.raises(course.CellError, match=r"9-broken.md, cell 2: ZeroDivisionError"):
        course.run(tmp_path / "9-broken.md")
