"""The alert engine: runs the rules on each observation, raises each key once, feeds the sinks."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from .events import Alert, Observation
from .rules import Rule
from .sinks import Sink

log = logging.getLogger(__name__)


class AlertEngine:
    """Runs ``rules`` on every observation and delivers new alerts to every sink.

    An alert key is raised once per engine lifetime (the last ``max_keys`` keys are remembered and
    saved in ``state_dict``) and, through ``already_raised(key) -> bool`` when given (e.g. a look-up
    in the alert store), across restarts. A rule or sink that raises is logged and counted in
    ``rule_errors`` / ``sink_failures`` and never stops the others or the line. Not thread-safe:
    call ``observe`` from one thread (the sinks do their slow work on their own threads).
    """

    def __init__(self, rules: Sequence[Rule], sinks: Sequence[Sink] = (),
                 already_raised: Callable[[str], bool] | None = None, max_keys: int = 100_000) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique (they key the saved state), got {names}")
        self.rules, self.sinks, self.already_raised, self.max_keys = list(rules), list(sinks), already_raised, max_keys
        self._raised: dict[str, None] = {}  # insertion-ordered set
        self.rule_errors: Counter[str] = Counter()
        self.sink_failures: Counter[str] = Counter()
        self.lookup_errors = 0

    def observe(self, obs: Observation) -> list[Alert]:
        """Run every rule on ``obs``; return and deliver the alerts not raised before."""
        new = [alert for rule in self.rules for alert in self._run(rule, obs) if self._first_time(alert.key)]
        for alert in new:
            self._deliver(alert)
        return new

    def _run(self, rule: Rule, obs: Observation) -> list[Alert]:
        try:
            return rule.observe(obs)
        except Exception:
            self.rule_errors[rule.name] += 1
            log.exception("alert rule %s failed on inspection %s", rule.name, obs.inspection_id)
            return []

    def _first_time(self, key: str) -> bool:
        if key in self._raised:
            return False
        self._remember(key)
        if self.already_raised is None:
            return True
        try:
            return not self.already_raised(key)
        except Exception:
            self.lookup_errors += 1
            log.exception("already_raised(%r) failed; raising the alert", key)
            return True

    def _remember(self, key: str) -> None:
        self._raised[key] = None
        while len(self._raised) > self.max_keys:
            del self._raised[next(iter(self._raised))]

    def _deliver(self, alert: Alert) -> None:
        for sink in self.sinks:
            try:
                sink.deliver(alert)
            except Exception:
                self.sink_failures[sink.name] += 1
                log.exception("alert sink %s failed on %s", sink.name, alert.key)

    def raised(self, key: str) -> bool:
        """Whether this engine has raised (or suppressed as already raised) ``key``."""
        return key in self._raised

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state of every rule and the raised keys."""
        return {"rules": {r.name: r.state_dict() for r in self.rules}, "raised": list(self._raised)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``; rules missing from it keep their fresh state."""
        for rule in self.rules:
            if rule.name in state["rules"]:
                rule.load_state_dict(state["rules"][rule.name])
        self._raised = dict.fromkeys(state["raised"])

    def flush(self, timeout: float | None = None) -> bool:
        """Flush every sink (each gets up to ``timeout``); True when all finished."""
        done = [sink.flush(timeout) for sink in self.sinks]  # every sink, no short-circuit
        return all(done)

    def close(self) -> None:
        """Close every sink, logging failures."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing alert sink %s failed", sink.name)
