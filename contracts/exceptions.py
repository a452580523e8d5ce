"""The root of every fraudscore exception, and the contract errors.

Hierarchy (each package's ``exceptions.py`` hangs its own errors under :class:`FraudscoreError`)::

    FraudscoreError                      root; carries a gRPC status name
    ├── ConfigError                      settings file or environment is wrong
    └── ContractError                    an event or request breaks the public contract
        ├── EventValidationError         one or more fields are invalid (all are named)
        └── CardNumberError              a card number was found (paths named, number never shown)
    (feature_state.exceptions, scoring.exceptions, rules.exceptions, stream_app.exceptions,
     training.exceptions add their own subclasses of FraudscoreError)

Errors that reach gRPC carry their status code via :meth:`FraudscoreError.grpc_status_name`;
``scoring.server`` maps it in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


class FraudscoreError(Exception):
    """Root of all fraudscore errors."""

    #: Name of the ``grpc.StatusCode`` this error maps to when it reaches a gRPC client.
    grpc_status: str = "INTERNAL"

    def grpc_status_name(self) -> str:
        return self.grpc_status


class ConfigError(FraudscoreError):
    """The configuration file or environment is invalid; the message says what to change."""

    grpc_status = "FAILED_PRECONDITION"


@dataclass(frozen=True)
class FieldError:
    """One invalid field: its JSON path (``$.payment.card_country``) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ContractError(FraudscoreError):
    """An event or request does not satisfy the public contract."""

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, message: str, errors: list[FieldError]) -> None:
        super().__init__(message)
        self.errors = errors

    @property
    def fields(self) -> list[str]:
        return [e.path for e in self.errors]


class EventValidationError(ContractError):
    """One or more fields are invalid. ``errors`` lists every one of them."""

    def __init__(self, event_type: str, errors: list[FieldError]) -> None:
        listed = "; ".join(str(e) for e in errors)
        super().__init__(f"invalid {event_type}: {listed}", errors)
        self.event_type = event_type


class CardNumberError(ContractError):
    """A string field holds something that looks like a card number.

    The message names the fields only. Send a card token (`payment.card_fingerprint`), never
    the number itself.
    """

    def __init__(self, paths: list[str]) -> None:
        errors = [FieldError(p, "looks like a card number (PAN); send a token instead") for p in paths]
        super().__init__(
            "card number found in " + ", ".join(paths) + "; card numbers are refused, send a token",
            errors,
        )
