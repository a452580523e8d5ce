"""rules errors.

Hierarchy::

    contracts.exceptions.FraudscoreError
    └── RulesError
        └── RulesetInvalid        a rule file failed to parse or validate (``file:line: message``)
"""

from __future__ import annotations

from contracts.exceptions import FraudscoreError


class RulesError(FraudscoreError):
    """Root of rules errors."""


class RulesetInvalid(RulesError):
    """A ruleset cannot be activated; ``problems`` lists every ``file:line: message``."""

    grpc_status = "FAILED_PRECONDITION"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
