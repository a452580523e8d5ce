"""The ``event_loop`` setting: which loop the long-running processes run on."""

from __future__ import annotations

import asyncio
import sys

import pytest

from contracts.config import load_settings
from contracts.exceptions import ConfigError
from fraudscore.loop import loop_factory, loop_name, run, running_loop_name


async def _which() -> str:
    await asyncio.sleep(0)
    return running_loop_name()


def test_auto_runs_uvloop_when_installed_and_asyncio_runs_the_standard_loop() -> None:
    assert load_settings(environ={}).event_loop == "auto"
    assert loop_name("auto") == "uvloop" and run(_which(), "auto") == "uvloop"
    assert loop_factory("asyncio") is None and run(_which(), "asyncio") == "asyncio"
    assert load_settings(environ={"FRAUDSCORE__EVENT_LOOP": "asyncio"}).event_loop == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert loop_factory("auto") is None and run(_which(), "auto") == "asyncio"
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        loop_factory("uvloop")


def test_an_unknown_loop_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="event_loop"):
        load_settings(environ={"FRAUDSCORE__EVENT_LOOP": "trio"})
