"""The default error policy: every failed event is dead-lettered; a flood of them logs one line per window."""

from __future__ import annotations

import logging

import pytest

from stream_app import policy
from stream_app.policy import ErrorAction, dead_letter_everything
from stream_app.records import SourceRecord


def test_a_poison_flood_logs_one_line_per_window_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(policy.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(policy, "_last_logged", {})
    rec = SourceRecord("orders", 3, 17, None, b'{"card": "4111 1111 1111 1111"}')
    with caplog.at_level(logging.WARNING, logger="stream_app.policy"):
        actions = {dead_letter_everything(ValueError("x"), rec, "card_number") for _ in range(500)}
        # another stage on the same topic has its own window
        dead_letter_everything(ValueError("x"), rec, "decode")
        now[0] += policy.LOG_EVERY_S
        dead_letter_everything(ValueError("x"), rec, "card_number")
    assert actions == {ErrorAction.DEAD_LETTER}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "stage card_number" in lines[0] and "more" not in lines[0]
    assert "stage decode" in lines[1]
    assert "+499 more" in lines[2]
    assert all("4111" not in line for line in lines)
