"""rules errors.

Hierarchy::

    contracts.exceptions.FraudscoreError
    └── RulesError
        ├── CelSyntaxError        a condition does not parse, or is over a size / nesting limit
        ├── RulesetInvalid        a rule file failed to parse or validate (every ``file:line: message``)
        ├── ListError             a list file is missing, unreadable or malformed
        ├── RuleTestFailed        an inline rule test expected another action (``fraudscore rules test``)
        └── BacktestError         history files are missing or malformed, a model cannot be loaded
"""

from __future__ import annotations

from contracts.exceptions import FraudscoreError


class RulesError(FraudscoreError):
    """Root of rules errors."""


class CelSyntaxError(RulesError):
    """A condition does not parse; ``pos`` is the character offset inside the condition."""

    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


class RulesetInvalid(RulesError):
    """A ruleset cannot be activated; ``problems`` lists every ``file:line: message``."""

    grpc_status = "FAILED_PRECONDITION"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ListError(RulesError):
    """A list (inline or a file of values) cannot be loaded."""

    grpc_status = "FAILED_PRECONDITION"


class RuleTestFailed(RulesError):
    """An inline test of a rule did not get the action it expected."""


class BacktestError(RulesError):
    """A backtest cannot run: history files, time range or model are wrong (the message says which)."""

    grpc_status = "INVALID_ARGUMENT"
