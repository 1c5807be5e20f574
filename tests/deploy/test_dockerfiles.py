"""deploy/docker/: static checks of the Dockerfiles (no image is built here: no registry).

Each check is a function returning the problems it found, run on the real file and on a
broken copy, so every check is seen to fail.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy._manifests import (
    DEPLOY,
    RAYCLUSTER,
    ROOT,
    build_args,
    dockerfile_instructions,
    exec_form,
    from_images,
    load,
    stages,
)

CONTROL_PLANE = DEPLOY / "docker" / "Dockerfile.control-plane"
EDGE_AGENT = DEPLOY / "docker" / "Dockerfile.edge-agent"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = set(PROJECT["project"]["optional-dependencies"])


def pin_problems(text: str) -> list[str]:
    """Base images without an exact version tag (a stage alias is fine)."""
    instructions = dockerfile_instructions(text)
    aliases: set[str] = set()
    problems = []
    for image, alias in from_images(instructions):
        if image not in aliases:
            last = image.split("/")[-1]
            tag = last.partition(":")[2]
            if "@sha256:" not in image and not re.match(r"^\d+\.\d+(\.\d+)?", tag):
                problems.append(f"FROM {image}: pin a version tag (or a digest)")
        if alias:
            aliases.add(alias)
    return problems


def user_problems(text: str) -> list[str]:
    """The final stage must switch to a user that is not root."""
    final = stages(dockerfile_instructions(text))[-1]
    users = [i.argument for i in final if i.keyword == "USER"]
    if not users:
        return ["the final stage has no USER: it would run as root"]
    user = users[-1].split(":")[0]
    return [f"USER {users[-1]}: root"] if user in ("root", "0") else []


def _module_exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return (path / "__main__.py").is_file() or path.with_suffix(".py").is_file()


def entrypoint_problems(text: str) -> list[str]:
    """The final stage's command must be ``python -m MODULE`` of a module of this repository."""
    final = stages(dockerfile_instructions(text))[-1]
    commands = [i for i in final if i.keyword in ("ENTRYPOINT", "CMD")]
    if not commands:
        return ["no ENTRYPOINT or CMD"]
    words = exec_form(commands[0].argument)
    if words[:2] != ["python", "-m"] or len(words) < 3:
        return [f"{commands[0].keyword} {words}: expected python -m MODULE"]
    return [] if _module_exists(words[2]) else [f"no module {words[2]} in the repository"]


def installed_extras(text: str) -> set[str]:
    """The extras of this project that ``pip install`` lines name (``.[cloud]``, ``*.whl[edge]``)."""
    extras: set[str] = set()
    for ins in dockerfile_instructions(text):
        if ins.keyword == "RUN" and "pip install" in ins.argument:
            for group in re.findall(r"(?:\.|\.whl\)?)\[([\w,-]+)\]", ins.argument):
                extras.update(group.split(","))
    return extras


def copy_problems(text: str) -> list[str]:
    """``COPY`` sources (from the build context) that the repository lacks."""
    problems = []
    for ins in dockerfile_instructions(text):
        if ins.keyword == "COPY" and "--from=" not in ins.argument:
            words = [w for w in ins.argument.split() if not w.startswith("--")]
            problems += [
                f"COPY {src}: not in the repository"
                for src in words[:-1]
                if not (ROOT / src).exists()
            ]
    return problems


@pytest.mark.parametrize("path", [CONTROL_PLANE, EDGE_AGENT], ids=lambda p: p.name)
def test_the_dockerfiles_pass_every_check(path: Path) -> None:
    text = path.read_text()
    assert pin_problems(text) == []
    assert user_problems(text) == []
    assert entrypoint_problems(text) == []
    assert copy_problems(text) == []
    assert installed_extras(text) and installed_extras(text) <= EXTRAS


@pytest.mark.parametrize(
    ("check", "old", "new"),
    [
        (pin_problems, "python:3.11.11-slim-bookworm", "python:latest"),
        (pin_problems, "python:3.11.11-slim-bookworm", "python"),
        (pin_problems, "python:3.11.11-slim-bookworm", "python:slim"),
        (user_problems, "USER 10001:10001", "USER root"),
        (user_problems, "USER 10001:10001", ""),
        (entrypoint_problems, '"-m", "edge_agent"', '"-m", "edge_agents"'),
        (entrypoint_problems, 'ENTRYPOINT ["python", "-m", "edge_agent"]', ""),
        (copy_problems, "COPY edge_agent ./edge_agent", "COPY edge_agnet ./edge_agent"),
    ],
)
def test_each_check_finds_a_broken_dockerfile(
    check: Callable[[str], list[str]], old: str, new: str
) -> None:
    text = EDGE_AGENT.read_text()
    assert old in text and check(text) == []
    assert check(text.replace(old, new)) != []


def test_a_missing_extra_is_found() -> None:
    text = EDGE_AGENT.read_text().replace("[edge]", "[edgy]")
    assert not installed_extras(text) <= EXTRAS


def test_the_edge_image_installs_the_edge_extra_only() -> None:
    text = EDGE_AGENT.read_text()
    assert installed_extras(text) == {"edge"}
    assert installed_extras(text.replace("[edge]", "[edge,cloud]")) != {"edge"}
    assert build_args(dockerfile_instructions(text))["PYTHON_IMAGE"].startswith("python:3.11")


def test_the_control_plane_image_is_ray_as_the_code_pins_it() -> None:
    instructions = dockerfile_instructions(CONTROL_PLANE.read_text())
    assert installed_extras(CONTROL_PLANE.read_text()) == {"cloud"}
    ((image, _),) = from_images(instructions)
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)", image)
    assert match, image
    (pin,) = [
        d for d in PROJECT["project"]["optional-dependencies"]["cloud"] if d.startswith("ray[")
    ]
    assert pin.endswith(f"=={match[1].rsplit('.', 1)[0]}.*"), (pin, image)
    (cluster,) = load(RAYCLUSTER)
    assert cluster["spec"]["rayVersion"] == match[1]
    # requires-python ">=3.11": the image's Python must satisfy it.
    minimum = tuple(int(p) for p in PROJECT["project"]["requires-python"].lstrip(">=").split("."))
    assert (int(match[2]), int(match[3])) >= minimum


def test_the_parser_joins_continued_lines_and_skips_comments() -> None:
    text = "# c\nARG A=x:1.0\nFROM ${A} AS b\nRUN a \\\n  # inner\n  b\nFROM b\nUSER 1\n"
    instructions = dockerfile_instructions(text)
    assert [i.keyword for i in instructions] == ["ARG", "FROM", "RUN", "FROM", "USER"]
    assert instructions[2].argument == "a  b"
    assert from_images(instructions) == [("x:1.0", "b"), ("b", None)]
    assert pin_problems(text) == [] and user_problems(text) == []
