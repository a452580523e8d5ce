"""`fraudscore artifact verify|sign|compile` and the scoring commands' help."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraudscore.cli import main


def test_artifact_verify_sign_and_refuse(registry: tuple[Path, str], monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    models, version = registry
    data = str(models.parent)
    assert main(["--data-dir", data, "artifact", "verify", version]) == 0
    assert "unsigned" in capsys.readouterr().out
    monkeypatch.setenv("FRAUDSCORE__SCORING__MODEL_SIGNING_KEY", "k-123")
    assert main(["--data-dir", data, "artifact", "verify", version]) == 1  # key set, manifest unsigned
    assert "not signed" in capsys.readouterr().err
    assert main(["--data-dir", data, "artifact", "sign", version]) == 0
    assert main(["--data-dir", data, "artifact", "verify", version]) == 0
    assert "signed" in capsys.readouterr().out
    monkeypatch.setenv("FRAUDSCORE__SCORING__MODEL_SIGNING_KEY", "another-key")
    assert main(["--data-dir", data, "artifact", "verify", version]) == 1
    assert "signature does not match" in capsys.readouterr().err
    monkeypatch.delenv("FRAUDSCORE__SCORING__MODEL_SIGNING_KEY")
    assert main(["--data-dir", data, "artifact", "verify", "m-nope"]) == 2  # usage: unknown version


def test_sign_without_key_is_a_usage_error(registry: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    models, version = registry
    assert main(["--data-dir", str(models.parent), "artifact", "sign", version]) == 2
    assert "signing key" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["serve"], ["score"], ["artifact"]])
def test_help_has_examples(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and "fraudscore" in out


def test_tokens_and_shadows_from_the_environment() -> None:
    from contracts.config import load_settings

    sc = load_settings(environ={"FRAUDSCORE__SCORING__AUTH_TOKENS": "tok1, tok2",
                                "FRAUDSCORE__SCORING__SHADOW_MODELS": "m1,m2"}).scoring
    assert [t.get_secret_value() for t in sc.auth_tokens] == ["tok1", "tok2"]
    assert sc.shadow_models == ("m1", "m2")
    assert "tok1" not in repr(sc)  # secrets never in a repr
