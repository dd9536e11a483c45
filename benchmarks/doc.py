"""Refresh one `## ` section of docs/benchmarks.md (appended when missing); name the machine."""

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


def report(head: str, lines: list[str], write: bool) -> None:
    """Print a benchmark's markdown lines; with `write`, also make them the `head` section of the doc."""
    body = "\n".join(lines)
    print(body)
    if write:
        write_section(head, body)


def machine() -> str:
    """The CPU's model name and the widest vector instructions torch's kernels use on it (AVX2, AVX512, ...)."""
    import torch

    from sumie.speed.tuning import cpu_model
    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()})"
