"""Who speaks when: the gate, speak grants, the rules, and the idle watchdog."""

from __future__ import annotations

from sidecar.controller.grants import Grant, GrantBook
from sidecar.controller.loop import Controller
from sidecar.controller.policy import Decision, RulePolicy

__all__ = ["Controller", "Decision", "Grant", "GrantBook", "RulePolicy"]
