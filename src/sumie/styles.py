"""A1111's prompt styles: a `styles.csv` of name, prompt, negative_prompt rows, applied to a request by name.

A style's prompt holding `{prompt}` takes the request's prompt in its place; any other is appended after a comma.
The negative prompt works the same way.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .errors import InputError


def read_styles(path: str | Path) -> dict[str, tuple[str, str]]:
    """name -> (prompt, negative prompt), in the file's order."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: cannot read the styles ({e})") from None
    if rows and "name" not in rows[0]:
        raise InputError(f"{path}: a styles file starts with the header name,prompt,negative_prompt")
    return {r["name"]: (r.get("prompt") or "", r.get("negative_prompt") or "") for r in rows if r.get("name")}


def merge(style: str, text: str) -> str:
    if "{prompt}" in style:
        return style.replace("{prompt}", text)
    return ", ".join(part for part in (text.strip(), style.strip()) if part)


def apply(prompt: str, negative: str, names: list[str], styles: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """The prompt and negative prompt with the named styles applied in order."""
    for name in names:
        if name not in styles:
            known = ", ".join(styles) or "none: give a styles.csv"
            raise InputError(f"unknown style {name!r} (known: {known})")
        prompt, negative = merge(styles[name][0], prompt), merge(styles[name][1], negative)
    return prompt, negative
