"""Errors raised by the traffic simulator.

Hierarchy::

    contracts.exceptions.FraudscoreError
    └── SimulatorError                 anything the simulator refuses or cannot do
        ├── SimulationConfigError      an option is out of range (also a contracts ConfigError)
        └── SinkError                  a target (Kafka, Kinesis, files) failed; the message says which
"""

from __future__ import annotations

from contracts.exceptions import ConfigError, FraudscoreError


class SimulatorError(FraudscoreError):
    """Root of the simulator's errors."""


class SimulationConfigError(SimulatorError, ConfigError):
    """A simulation option is invalid; the message names the option and the accepted range."""

    grpc_status = "INVALID_ARGUMENT"


class SinkError(SimulatorError):
    """Writing to a target failed (broker unreachable, stream missing, disk full …)."""

    grpc_status = "UNAVAILABLE"
