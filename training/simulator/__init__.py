"""Synthetic payment traffic, reproducible from a seed (``fraudscore simulate``).

Python API::

    from training.simulator import SimulationConfig, simulate, write_files

    sim = simulate(SimulationConfig(seed=7, days=30, fraud_rate=0.01))
    write_files(sim, "data/sim", fmt="parquet")   # orders, labels, truth (+ summary.json)
    print(sim.summary.fraud_rate)

    for event in simulate(SimulationConfig(days=1)):   # or consume the stream yourself
        event.stream, event.key, event.value              # "orders" | "labels" | "truth"

Modules: ``config`` (options and stated distributions), ``world`` (entities), ``traffic`` (legit
orders), ``scenarios`` (fraud), ``labels`` (late labels), ``anomalies`` (malformed events),
``daygen`` (one day, encoded), ``generator`` (the merged stream), ``sinks`` (files, Kafka,
Kinesis), ``cli`` (``fraudscore simulate``). See ``docs/simulator.md``.
"""

from training.simulator.config import SCENARIOS, ScenarioMix, SimulationConfig
from training.simulator.exceptions import SimulationConfigError, SimulatorError, SinkError
from training.simulator.generator import Simulation, simulate
from training.simulator.records import DEFECTS, SimEvent, SimulationSummary, TruthRecord
from training.simulator.sinks import (
    KafkaTarget,
    KinesisTarget,
    SinkReport,
    StopFlag,
    send_to_kafka,
    send_to_kinesis,
    write_files,
)

__all__ = [
    "DEFECTS",
    "SCENARIOS",
    "KafkaTarget",
    "KinesisTarget",
    "ScenarioMix",
    "SimEvent",
    "Simulation",
    "SimulationConfig",
    "SimulationConfigError",
    "SimulationSummary",
    "SimulatorError",
    "SinkError",
    "SinkReport",
    "StopFlag",
    "TruthRecord",
    "send_to_kafka",
    "send_to_kinesis",
    "simulate",
    "write_files",
]
