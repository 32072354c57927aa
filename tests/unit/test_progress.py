"""Progress output: a redrawn bar in a terminal, plain periodic lines elsewhere."""

from __future__ import annotations

import io

from ganops import progress


def test_plain_lines_when_stderr_is_not_a_terminal(monkeypatch):
    buf = io.StringIO()  # not a TTY
    monkeypatch.setattr(progress.sys, "stderr", buf)
    monkeypatch.setenv(progress.ENV_INTERVAL, "0")
    with progress.progress_bar(total=4, desc="Inception features, generated", unit="img") as bar:
        for _ in range(4):
            bar.update(1)
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.strip().splitlines()
    assert len(lines) >= 2 and lines[-1].startswith("Inception features, generated: 100%")
    assert "4/4" in lines[-1] and "img/s" in lines[-1]


def test_interval_env_falls_back_on_bad_values(monkeypatch):
    monkeypatch.setenv(progress.ENV_INTERVAL, "soon")
    assert progress.plain_interval_s() == progress.DEFAULT_INTERVAL_S
    monkeypatch.setenv(progress.ENV_INTERVAL, "5")
    assert progress.plain_interval_s() == 5.0
