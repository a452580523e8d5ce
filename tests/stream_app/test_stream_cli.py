"""The operators' commands: ``topics create|list``, ``dlq inspect|replay``, ``worker --help``."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from streamkit import produce, read_all

from contracts.pan import contains_pan
from fraudscore.cli import main
from stream_app.deadletter import dead_letter, encode_dead_letter
from stream_app.dlq import REPLAY_HEADER
from tests.services import KafkaBroker

PAN = "4111 1111 1111 1111"


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, kafka_broker: KafkaBroker, unique: str, tmp_path: Any) -> dict[str, str]:
    for k in list(os.environ):
        if k.startswith("FRAUDSCORE"):
            monkeypatch.delenv(k)
    env = {"KAFKA_BOOTSTRAP": kafka_broker.bootstrap, "FRAUDSCORE_DATA_DIR": str(tmp_path / "data"),
           "FRAUDSCORE__KAFKA__PARTITIONS": "2"}
    for name in ("orders", "labels", "decisions", "actions", "dead_letters", "retrain_requests"):
        env[f"FRAUDSCORE__KAFKA__TOPICS__{name.upper()}"] = f"{name.replace('_', '-')}-{unique}"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def test_topics_create_then_list(cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "list"]) == 1  # missing topics are a problem
    assert "MISSING" in capsys.readouterr().out
    assert main(["topics", "create"]) == 0
    assert main(["topics", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{cli_env['FRAUDSCORE__KAFKA__TOPICS__ORDERS']}: 2 partitions" in out


def test_dlq_inspect_and_replay(cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "create"]) == 0
    capsys.readouterr()
    orders = cli_env["FRAUDSCORE__KAFKA__TOPICS__ORDERS"]
    assert main(["dlq", "inspect"]) == 0
    assert "empty" in capsys.readouterr().out
    good_later = b'{"order_id": "o-1", "amount": 1}'
    with_pan = b'{"order_id": "o-2", "device_id": "' + PAN.encode() + b'"}'
    letters = [
        dead_letter(ValueError("store bug"), good_later, topic=orders, partition=0, offset=7, key=b"c-1",
                    stage="processing"),
        dead_letter(ValueError("card number"), with_pan, topic=orders, partition=1, offset=9, key=b"c-2",
                    stage="card_number"),
    ]
    assert letters[1].masked and not contains_pan(letters[1].payload)
    asyncio.run(produce(cli_env["KAFKA_BOOTSTRAP"], cli_env["FRAUDSCORE__KAFKA__TOPICS__DEAD_LETTERS"],
                        [(b"k", encode_dead_letter(dl)) for dl in letters]))
    assert main(["dlq", "inspect", "--limit", "2"]) == 1  # dead letters exist
    out = capsys.readouterr().out
    assert "2 dead letters" in out and "processing" in out and "card_number" in out
    assert "4111" not in out.replace("************1111", "")
    assert main(["dlq", "inspect", "--json", "--limit", "0"]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["stage"] for r in rows} == {"processing", "card_number"}
    assert main(["dlq", "replay", "--dry-run"]) == 0
    assert "1 had card numbers masked" in capsys.readouterr().out
    assert main(["dlq", "replay", "--stage", "processing"]) == 0
    replayed = asyncio.run(read_all(cli_env["KAFKA_BOOTSTRAP"], orders, expect_at_least=1, idle_s=0.5))
    assert [(r.key, r.value) for r in replayed] == [(b"c-1", good_later)]
    assert replayed[0].headers[REPLAY_HEADER] == f"{orders}[0]@7".encode()


def test_worker_help_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for words in ("--role", "orders", "labels", "webhook", "/healthz", "examples", "kinesis"):
        assert words in out


def test_worker_rejects_unknown_roles(cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--role", "orders,bogus"]) == 2
    assert "unknown role" in capsys.readouterr().err
    assert main(["worker", "--role", "webhook"]) == 2  # no webhook URL configured
    assert "stream.webhook.url" in capsys.readouterr().err
