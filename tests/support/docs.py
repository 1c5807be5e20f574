"""The code blocks of README.md and ARCHITECTURE.md, and the tests that cover each.

Every fenced block but a ``text`` one (diagrams) has, on the last non-blank
line before it, a comment naming the tests that run or check it::

    <!-- doctest: tests/unit/test_docs.py::test_commands_run -->
    ```bash
    mesh scenario validate scenarios/*.yaml
    ```

A test that runs blocks takes the ones tagged with its own id
(:func:`blocks_for`), so a block and its test cannot drift apart;
``tests/unit/test_docs.py`` fails on a block with no tag and on a tag naming a
test that does not exist (:func:`problems`).

Import explicitly::

    from tests.support.docs import blocks_for
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "ARCHITECTURE.md")
#: Languages a block may have: ``text`` is not code; the others need a tag.
LANGUAGES = frozenset({"text", "python", "bash"})

_FENCE = re.compile(r"^(```+)\s*(\S*)\s*$")
_TAG = re.compile(r"^<!--\s*doctest:\s*(.*?)\s*-->$")
_TEST_ID = re.compile(r"^(tests/[\w/]+\.py)::(test_\w+)$")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block of a document."""

    doc: str
    line: int  # of the block's first code line, 1-based
    lang: str
    code: str
    tests: tuple[str, ...]
    tag: str | None  # the tag comment as written, None when there is none

    @property
    def where(self) -> str:
        """``README.md:123``."""
        return f"{self.doc}:{self.line}"

    def padded(self) -> str:
        """The code after blank lines, so a traceback's line numbers are the document's."""
        return "\n" * (self.line - 1) + self.code

    def commands(self) -> list[list[str]]:
        """A bash block's commands, one word list per line (continuations joined)."""
        out = []
        for line in self.code.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(words)
        return out


def parse(doc: str, text: str) -> list[Block]:
    """The fenced blocks of ``text`` (the document named ``doc``), with their tags."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        ticks, lang = fence.group(1), fence.group(2)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == ticks), None)
        if end is None:
            raise ValueError(f"{doc}:{i + 1}: a code block that never closes")
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        tag = _TAG.match(before)
        tests = tuple(t.strip() for t in tag.group(1).split(",") if t.strip()) if tag else ()
        code = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(doc, i + 2, lang, code, tests, before if tag else None))
        i = end + 1
    return blocks


def all_blocks(root: Path = ROOT) -> list[Block]:
    """Every block of README.md and ARCHITECTURE.md, in document order."""
    return [b for doc in DOCS for b in parse(doc, (root / doc).read_text())]


def blocks_for(test_id: str) -> list[Block]:
    """The blocks tagged with ``test_id`` (``tests/x.py::test_y``), in document order.

    Raises:
        AssertionError: no block names it (the docs changed: move the tag or the test).
    """
    test_id = test_id.split("[", 1)[0]
    found = [b for b in all_blocks() if test_id in b.tests]
    if not found:
        raise AssertionError(f"no block of {' or '.join(DOCS)} is tagged for {test_id}")
    return found


def _test_exists(test_id: str, root: Path) -> str | None:
    """Why ``test_id`` does not name a test function under ``root``; None when it does."""
    match = _TEST_ID.match(test_id)
    if match is None:
        return f"{test_id!r} is not a test id: expected tests/<path>.py::test_<name>"
    path, name = root / match.group(1), match.group(2)
    if not path.is_file():
        return f"{test_id}: no file {match.group(1)}"
    tree = ast.parse(path.read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    if name not in defined:
        return f"{test_id}: {match.group(1)} defines no function {name}"
    return None


def problems(blocks: Iterable[Block], root: Path = ROOT) -> list[str]:
    """What is wrong with the blocks' tags: each problem names the block's line."""
    out = []
    for block in blocks:
        if block.lang not in LANGUAGES:
            out.append(
                f"{block.where}: a ```{block.lang or '(no language)'} block; fence code as "
                f"{' or '.join(sorted(LANGUAGES - {'text'}))} and tag it, or diagrams as text"
            )
            continue
        if block.lang == "text":
            if block.tag is not None:
                out.append(f"{block.where}: a text block is not run; remove its doctest tag")
            continue
        if not block.tests:
            out.append(
                f"{block.where}: a ```{block.lang} block no test covers; put "
                "<!-- doctest: tests/<path>.py::test_<name> --> on the line before it"
            )
        for test_id in block.tests:
            why = _test_exists(test_id, root)
            if why is not None:
                out.append(f"{block.where}: {why}")
    return out
