"""Long loops show what they do and how much is left on a terminal, and stay quiet in logs."""

from __future__ import annotations

import sys

import pytest

from bcd.utils.progress import progress


def test_quiet_when_not_a_terminal(capsys: pytest.CaptureFixture) -> None:
    assert list(progress(range(3), "scoring 3 images", 3)) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_a_bar_with_the_task_and_the_count_on_a_terminal(capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert list(progress(iter("abc"), "scoring 3 images", 3)) == ["a", "b", "c"]
    shown = capsys.readouterr().err
    assert "scoring 3 images" in shown and "3/3" in shown
