"""Fault injection, for tests only: make the engine fail on purpose, once, at a chosen point.

Off unless a test builds a `FaultInjector` (in-process) or a server starts with
`FLINTLM_FAULT_INJECT` set (read in `flintlm/env.py`). Each fault fires once, so the engine's
recovery (or its death, for `loop_step`) is what the test then observes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flintlm.engine.outputs import SchedulerOutput

_FORMAT = ("comma-separated key=N pairs: runner_call=N (the runner's Nth call raises), "
           "runner_batch=N (its first call with at least N requests raises), "
           "loop_step=N (the engine loop dies before its Nth step)")


class InjectedFault(RuntimeError):
    """The failure a `FaultInjector` raises."""


@dataclass
class FaultInjector:
    """Where to fail (1-based counts); None: never. Mutable: it counts calls and fires once."""

    runner_call: int | None = None
    runner_batch: int | None = None
    loop_step: int | None = None
    _num_runner_calls: int = 0
    _num_loop_steps: int = 0

    @classmethod
    def parse(cls, text: str) -> FaultInjector:
        """`"runner_batch=2"` -> FaultInjector(runner_batch=2); raises ValueError naming the
        accepted format."""
        values: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, number = item.partition("=")
            if key.strip() not in ("runner_call", "runner_batch", "loop_step") or \
                    not number.strip().isdigit() or int(number) < 1:
                raise ValueError(f"fault injection {text!r}: expected {_FORMAT}")
            values[key.strip()] = int(number)
        if not values:
            raise ValueError(f"fault injection {text!r}: expected {_FORMAT}")
        return cls(**values)

    def before_run(self, scheduler_output: SchedulerOutput) -> None:
        """Called by the engine just before the runner: raise if this call is the chosen one."""
        self._num_runner_calls += 1
        if self._num_runner_calls == self.runner_call:
            self.runner_call = None
            raise InjectedFault(f"injected runner fault at call {self._num_runner_calls}")
        if self.runner_batch is not None and len(scheduler_output.scheduled) >= self.runner_batch:
            num_requests, self.runner_batch = len(scheduler_output.scheduled), None
            raise InjectedFault(f"injected runner fault in a batch of {num_requests} requests")

    def before_loop_step(self) -> None:
        """Called by the engine loop before each step: raise (outside any step) if chosen."""
        self._num_loop_steps += 1
        if self._num_loop_steps == self.loop_step:
            raise InjectedFault(f"injected engine-loop fault at step {self._num_loop_steps}")
