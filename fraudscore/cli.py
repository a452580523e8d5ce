"""The ``fraudscore`` command line: a thin composition root over the packages.

Every subcommand parses its flags here or in its package's ``cli`` module, loads the settings once
(file, then environment, then flags) and calls into the package. Exit codes: 0 ok, 1 the command
ran and found problems (e.g. invalid rules), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contracts.config import Settings, load_settings
from contracts.exceptions import FraudscoreError

Handler = Callable[[argparse.Namespace, Settings], int]

EPILOG = """\
examples:
  fraudscore up --demo                 the whole platform locally, with simulated traffic
  fraudscore simulate --days 30 --to jsonl --out data/
  fraudscore train --orders data/orders.jsonl --labels data/labels.jsonl
  fraudscore models list
  fraudscore rules check rules/examples

environment: KAFKA_BOOTSTRAP, REDIS_URL, FRAUDSCORE_CONFIG, FRAUDSCORE_DATA_DIR, FRAUDSCORE_GRPC_PORT,
FRAUDSCORE_METRICS_PORT, FRAUDSCORE__SECTION__FIELD=value (any setting). Docs: README.md.
"""


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "grpc_port", None):
        overrides["scoring.grpc_port"] = args.grpc_port
    if getattr(args, "metrics_port", None):
        overrides["metrics.port"] = args.metrics_port
    if getattr(args, "rules_dir", None):
        overrides["rules.dir"] = args.rules_dir
    return load_settings(args.config, environ=os.environ, overrides=overrides)


# ---------------------------------------------------------------------------------------------- up


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from fraudscore.loop import run
    from fraudscore.up import run_platform

    return run(run_platform(settings, demo=args.demo, demo_rate=args.rate), settings.event_loop)


def _add_up(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "up",
        help="run the platform locally: broker, feature store, stream worker, gRPC Score",
        description=(
            "Run the whole platform on this machine. With nothing configured it starts an embedded "
            "Kafka-compatible broker (memory storage) and an in-process feature store; set KAFKA_BOOTSTRAP "
            "and/or REDIS_URL to use real ones. Trains a first model on simulated history when the model "
            "registry is empty. Stops cleanly on Ctrl-C / SIGTERM."
        ),
        epilog=(
            "examples:\n"
            "  fraudscore up --demo\n"
            "  KAFKA_BOOTSTRAP=kafka:9092 REDIS_URL=redis://localhost:6379 fraudscore up"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--demo", action="store_true", help="also run live simulated traffic and print a summary")
    p.add_argument("--rate", type=float, default=200.0, help="demo orders per second (default 200)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 50051)")
    p.add_argument("--metrics-port", type=int, help="metrics / health HTTP port (default 9108)")
    p.add_argument("--rules-dir", type=Path, help="rules directory to serve (hot-reloaded)")
    p.set_defaults(handler=_cmd_up)


# ---------------------------------------------------------------------------------------- simulate


def _add_simulate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from training.simulator import cli as sim_cli

    p = sub.add_parser(
        "simulate",
        help="synthetic orders and delayed labels (seeded) to Kafka, Kinesis or JSONL/Parquet files",
        description=(sim_cli.__doc__ or "").strip().splitlines()[0] if sim_cli.__doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim_cli.add_arguments(p)
    p.set_defaults(handler=sim_cli.run)


# ------------------------------------------------------------------------------------------ models


def _cmd_models_list(args: argparse.Namespace, settings: Settings) -> int:
    from scoring.artifacts import champion_version, read_manifest
    from training.registry import list_versions

    champion = champion_version(settings.models_dir)
    versions = list_versions(settings.models_dir)
    if not versions:
        print(f"no models in {settings.models_dir}; `fraudscore train` or `fraudscore up` creates one")
        return 0
    for v in versions:
        m = read_manifest(settings.models_dir / v).raw
        ap = m.get("metrics", {}).get("average_precision")
        mark = "*" if v == champion else " "
        print(f"{mark} {v}  created {m.get('created_at', '?')[:19]}  AP {ap}  features {len(m['feature_names'])}")
    return 0


def _cmd_models_promote(args: argparse.Namespace, settings: Settings) -> int:
    from training.registry import promote

    promote(settings.models_dir, args.version, reason=args.reason)
    print(f"{args.version} is now the champion")
    return 0


def _cmd_models_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from training.registry import rollback

    version = rollback(settings.models_dir, reason=args.reason)
    print(f"rolled back: {version} is the champion again")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("models", help="list and promote model versions in the registry",
                       description="The model registry in <data_dir>/models: versions, the champion, promotions.")
    msub = p.add_subparsers(dest="models_cmd", required=True, metavar="{list,promote,rollback}")
    lp = msub.add_parser("list", help="list versions; * marks the champion")
    lp.set_defaults(handler=_cmd_models_list)
    pp = msub.add_parser("promote", help="make a version the champion (verified first; audited)")
    pp.add_argument("version", help="model version, as shown by `fraudscore models list`")
    pp.add_argument("--reason", default="manual", help="why (recorded in the audit log)")
    pp.set_defaults(handler=_cmd_models_promote)
    rp = msub.add_parser("rollback", help="make the previous champion the champion again (audited)",
                         description="Roll back to the champion before the current one, per the audit log; "
                         "versions whose artifact no longer verifies are skipped. Servers pick it up on their "
                         "next reload.")
    rp.add_argument("--reason", default="manual rollback", help="why (recorded in the audit log)")
    rp.set_defaults(handler=_cmd_models_rollback)


# ------------------------------------------------------------------------------------------- train


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from contracts.events import decode_label, decode_order
    from feature_state.definitions import load_feature_set
    from training.train import train_and_register

    orders = [decode_order(line) for line in args.orders.read_bytes().splitlines() if line.strip()]
    labels = [decode_label(line) for line in args.labels.read_bytes().splitlines() if line.strip()]
    features = load_feature_set(settings.feature_store.definitions)
    version = train_and_register(orders, labels, features, settings.models_dir, promote_now=args.promote,
                                 rounds=args.rounds)
    from scoring.artifacts import read_manifest

    print(json.dumps({"version": version, **read_manifest(settings.models_dir / version).raw["metrics"]}))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "train",
        help="train an XGBoost model from orders and labels files and register it",
        description="Build point-in-time features with the online feature code, train XGBoost, evaluate on "
        "the latest 20%% of orders (time split) and register the model.",
        epilog="example:\n  fraudscore train --orders data/orders.jsonl --labels data/labels.jsonl --promote",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--orders", type=Path, required=True, help="orders JSONL file")
    p.add_argument("--labels", type=Path, required=True, help="labels JSONL file")
    p.add_argument("--rounds", type=int, default=200, help="boosting rounds (default 200)")
    p.add_argument("--promote", action="store_true", help="make the new model the champion")
    p.set_defaults(handler=_cmd_train)


# -------------------------------------------------------------------------------------------- main

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [  # type: ignore[type-arg]
    _add_up, _add_simulate, _add_train, _add_models,
]


#: Packages that contribute subcommands: each module exposes ``register(subparsers)``, adding parsers whose
#: ``handler`` default is a ``(args, settings) -> int`` function.
PACKAGE_CLIS = ("feature_state.cli", "rules.cli", "scoring.cli", "stream_app.cli", "monitoring.cli")


def _register_packages(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    import importlib

    for name in PACKAGE_CLIS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that package has no subcommands yet
                continue
            raise
        module.register(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudscore",
        description="fraudscore: real-time payments fraud scoring — rolling features, XGBoost, CEL rules, gRPC Score.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="settings YAML file (default $FRAUDSCORE_CONFIG)")
    parser.add_argument("--data-dir", type=Path, help="models, state and reports (default .fraudscore)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    _register_packages(sub)
    _describe_subcommands(parser)
    return parser


def _describe_subcommands(parser: argparse.ArgumentParser) -> None:
    """A subcommand registered with only ``help=`` gets it as its description too.

    ``help`` shows in the parent's list; ``--help`` of the subcommand itself shows ``description``,
    which argparse leaves empty unless told.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                if not child.description and helps.get(name):
                    child.description = str(helps[name])
                _describe_subcommands(child)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Handler = args.handler
    try:
        settings = _settings(args)
        return handler(args, settings)
    except FraudscoreError as exc:
        print(f"fraudscore: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
