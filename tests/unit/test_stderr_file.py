"""What libraries write goes to the run's log; the story keeps the terminal."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from rich.console import Console

from mesh.core._stderr_file import stderr_to_file


def test_descriptor_2_and_prints_go_to_the_log_and_a_pinned_console_does_not(
    tmp_path: Path,
) -> None:
    terminal = io.StringIO()
    console = Console(file=terminal, width=80)
    before = sys.stdout
    with stderr_to_file(tmp_path / "run.log", stdout=True) as log:
        os.write(2, b"core_worker.cc: noise\n")
        print("(raylet) Raylet is terminated. [state-dump] ...")  # as Ray's driver prints
        console.print("t=40 s cpu_hog on agent j-A0")
    assert sys.stdout is before
    text = log.read_text()
    assert "core_worker.cc: noise" in text and "[state-dump]" in text
    assert "cpu_hog" not in text
    assert terminal.getvalue().strip() == "t=40 s cpu_hog on agent j-A0"


def test_each_run_starts_its_log_afresh(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    path.write_text("the last run\n")
    with stderr_to_file(path):
        os.write(2, b"this run\n")
    assert path.read_text() == "this run\n"
