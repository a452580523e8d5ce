"""Every command and subcommand explains itself; wrong input gets a clear error, not a traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from fraudscore.cli import build_parser, main


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(_walk(sub, (*path, name)))
    return found


ALL = _walk(build_parser())


def test_the_design_commands_exist() -> None:
    top = {p[0] for p, _ in ALL if len(p) == 1}
    assert {"up", "simulate", "train", "models", "rules"} <= top


@pytest.mark.parametrize(("path", "parser"), ALL, ids=[" ".join(p) or "fraudscore" for p, _ in ALL])
def test_help_is_useful(
    path: tuple[str, ...], parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: fraudscore")
    assert parser.description, f"`fraudscore {' '.join(path)}` has no description"
    assert parser.description.split("\n")[0][:40] in text, "the description is shown by --help"
    # the help of a command names what it does in more than a usage line
    assert len(text.splitlines()) > 3


def test_unknown_command_and_bad_flag_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["up", "--rate", "fast"])
    assert info.value.code == 2
    assert "invalid float value" in capsys.readouterr().err


def test_bad_configuration_is_reported_without_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run([sys.executable, "-m", "fraudscore", "models", "list"], capture_output=True, text=True,
                         env={"FRAUDSCORE_GRPC_PORT": "not-a-port", "PATH": "/usr/bin:/bin"}, cwd=tmp_path,
                         timeout=60, check=False)
    assert out.returncode == 2
    assert "scoring.grpc_port" in out.stderr
    assert "Traceback" not in out.stderr
