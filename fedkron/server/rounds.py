"""One round loop: Flower's ``Strategy.start``, also for a run resumed after round K.

``start`` always counts rounds from 1 and evaluates round 0 first. A resumed run shifts the round
numbers the strategy and the evaluation see by K (so seeded sampling, FedAdam's bias correction
and the metrics rows carry the true round) and skips the round-0 evaluation it already has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class _Shifted(Strategy):
    """``strategy`` with every round number moved on by ``offset``."""

    def __init__(self, strategy: Strategy, offset: int):
        self.strategy, self.offset = strategy, offset

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)

    def summary(self) -> None:
        self.strategy.summary()


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    first_round: int,
    last_round: int,
    evaluate_fn: EvaluateFn,
    timeout: float,
) -> Result:
    """Rounds ``first_round..last_round`` with ``strategy.start``; ``evaluate_fn`` sees true round
    numbers, and round 0 only when the run starts at round 1."""
    offset = first_round - 1
    if offset == 0:
        return strategy.start(grid, arrays, num_rounds=last_round, timeout=timeout, evaluate_fn=evaluate_fn)

    def shifted_eval(server_round: int, current: ArrayRecord) -> MetricRecord | None:
        return evaluate_fn(server_round + offset, current) if server_round > 0 else None

    return _Shifted(strategy, offset).start(
        grid, arrays, num_rounds=last_round - offset, timeout=timeout, evaluate_fn=shifted_eval
    )
