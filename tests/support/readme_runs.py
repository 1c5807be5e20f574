"""README's multi-host commands against what a multi-host test really ran (issue 16).

A README block tagged ``<!-- doctest: tests/multihost/x.py::test_y -->`` shows
commands that test runs on the test bed. :func:`readme_drift` holds the block to
it: each README command must be one the test ran (the same program and
subcommand), with no option and no environment variable the test did not
give it; and for the commands whose every option is part of the documented
path (``mesh node join``, ``mesh agents enroll``, ``mesh-edge-agent``), the
test may use none README leaves out. Values differ (README's ``CLOUD_IP``,
the test's free ports), so only names are compared.

The test bed records what runs in its hosts (``TestBed.ran``): argv lists that
may start with ``env -uNAME ... NAME=value ...``, ``stdbuf -oL``, or a full path
to ``python -m mesh.cli``.

Example:
    >>> cmd = parse_command(["env", "-uRAY_ADDRESS", "A=1", "/v/bin/python", "-m", "mesh.cli",
    ...                      "node", "join", "h:1", "--tier", "fog"])
    >>> cmd.key, cmd.flags, cmd.env
    ('mesh node join', frozenset({'--tier'}), frozenset({'A'}))
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePath

from tests.support.docs import blocks_for

__all__ = ["Command", "parse_command", "readme_drift"]

#: ``mesh`` command groups: their subcommand is part of the key.
_GROUPS = {"node", "agents", "modules", "models", "tokens", "placements"}
#: Commands whose options are the documented path: the test uses none README leaves out.
EXACT = {"mesh node join", "mesh agents enroll", "mesh-edge-agent"}
#: What README shows that no test runs in a host, and why.
NOT_RUN = {
    "openssl": "the test writes the Ray token with Python's secrets module",
    "export": "an assignment for the lines below, not a command",
    "chmod": "the test writes the file with mode 0600 itself",
}
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")


@dataclass(frozen=True)
class Command:
    """A command's program and subcommands (``key``), option names and variables set."""

    key: str
    flags: frozenset[str]
    env: frozenset[str]


def parse_command(words: Sequence[str]) -> Command:
    """The :class:`Command` of one argv or README line."""
    words = list(words)
    env: set[str] = set()
    if words and PurePath(words[0]).name == "env":
        words = words[1:]
        while words and (words[0].startswith("-") or _ENV.match(words[0])):
            if _ENV.match(words[0]):
                env.add(words[0].split("=", 1)[0])
            words = words[1:]
    while words and _ENV.match(words[0]):
        env.add(words[0].split("=", 1)[0])
        words = words[1:]
    if words and PurePath(words[0]).name == "stdbuf":
        words = words[1:]
        while words and words[0].startswith("-"):
            words = words[1:]
    if not words:
        return Command("", frozenset(), frozenset(env))
    program = PurePath(words[0]).name
    rest = words[1:]
    if program.startswith("python") and rest[:2] == ["-m", "mesh.cli"]:
        program, rest = "mesh", rest[2:]
    key = [program]
    if program == "mesh" and rest:
        key.append(rest[0])
        if rest[0] in _GROUPS and len(rest) > 1:
            key.append(rest[1])
    elif program == "ray" and rest:
        key.append(rest[0])
    flags = frozenset(w.split("=", 1)[0] for w in rest if w.startswith("--"))
    return Command(" ".join(key), flags, frozenset(env))


def readme_drift(test_id: str, ran: Iterable[Sequence[str]]) -> list[str]:
    """What README's blocks tagged ``test_id`` show that the test did not run; [] when none."""
    done: dict[str, list[Command]] = {}
    for argv in ran:
        command = parse_command(argv)
        done.setdefault(command.key, []).append(command)
    problems: list[str] = []
    for block in blocks_for(test_id):
        for words in block.commands():
            shown = parse_command(words)
            if shown.key.split(" ")[0] in NOT_RUN or not shown.key:
                continue
            runs = done.get(shown.key)
            if not runs:
                problems.append(f"{block.where}: `{shown.key}` is shown but the test never ran it")
                continue
            flags = frozenset().union(*(r.flags for r in runs))
            env = frozenset().union(*(r.env for r in runs))
            for flag in sorted(shown.flags - flags):
                problems.append(f"{block.where}: `{shown.key} {flag}`: the test never passed it")
            for name in sorted(shown.env - env):
                problems.append(f"{block.where}: `{name}` for `{shown.key}`: the test never set it")
            if shown.key in EXACT:
                for flag in sorted(flags - shown.flags):
                    problems.append(
                        f"{block.where}: `{shown.key}` runs with {flag} in the test, not in README"
                    )
    return problems
