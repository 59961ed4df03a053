"""Flower's own strategies by name, and the differential-privacy wrapper around them.

The decoding wrapper (:mod:`fedkron.strategies.wrapper`) hands every one of these the plain float
adapter factors a stock strategy expects, so aggregation is Flower's code, not ours. Each entry
builds the strategy from the run config and names the settings it cannot work with, so a bad
combination is refused before Ray starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config imports this module for the strategy names
    from flwr.serverapp.strategy import Strategy

    from fedkron.runconfig.fields import RunConfig


@dataclass(frozen=True)
class StrategySpec:
    flower_class: str  # in flwr.serverapp.strategy
    options: Callable[[RunConfig], dict]  # its constructor's own arguments
    needs: Callable[[RunConfig], list[str]] = lambda cfg: []  # settings it cannot work with
    reads: tuple[str, ...] = ()  # the run-config fields it reads (others of STRATEGY_FIELDS are refused)
    array_state: bool = False  # keeps server state per array across rounds (momentum, moments)

    def build(self, cfg: RunConfig, **common) -> Strategy:
        # here: Flower's strategies load the server runtime (a second); read only when a run starts
        from flwr.serverapp import (
            strategy as flower,
        )

        return getattr(flower, self.flower_class)(**common, **self.options(cfg))

    def problems(self, cfg: RunConfig) -> list[str]:
        return self.needs(cfg)


def _eta(cfg: RunConfig) -> dict:
    """FedOpt's server step; Flower's default (0.1) unless --server-lr is set away from 1."""
    return {"eta": cfg.server_lr} if cfg.server_lr != 1.0 else {}


def _krum_needs(cfg: RunConfig) -> list[str]:
    n, f = cfg.sampled_per_round(), cfg.num_malicious
    return (
        []
        if n > 2 * f + 2
        else [f"krum needs more than 2·num-malicious + 2 = {2 * f + 2} clients a round (it samples {n})"]
    )


def _bulyan_needs(cfg: RunConfig) -> list[str]:
    n, f = cfg.sampled_per_round(), cfg.num_malicious
    return (
        []
        if n >= 4 * f + 3
        else [f"bulyan needs at least 4·num-malicious + 3 = {4 * f + 3} clients a round (it samples {n})"]
    )


STRATEGIES: dict[str, StrategySpec] = {
    # FedAvg with a server learning rate ≠ 1 is FedAvgM without momentum: w + lr · mean(Δ).
    "fedavg": StrategySpec("FedAvg", lambda c: {}, reads=("server_lr",)),
    "fedavgm": StrategySpec(
        "FedAvgM",
        lambda c: {"server_learning_rate": c.server_lr, "server_momentum": c.server_momentum},
        reads=("server_lr", "server_momentum"),
        array_state=True,
    ),
    "fedadam": StrategySpec("FedAdam", _eta, reads=("server_lr",), array_state=True),
    "fedyogi": StrategySpec("FedYogi", _eta, reads=("server_lr",), array_state=True),
    "fedadagrad": StrategySpec("FedAdagrad", _eta, reads=("server_lr",), array_state=True),
    "fedprox": StrategySpec("FedProx", lambda c: {"proximal_mu": c.proximal_mu}, reads=("proximal_mu",)),
    "fedmedian": StrategySpec("FedMedian", lambda c: {}),
    "fedtrimmedavg": StrategySpec("FedTrimmedAvg", lambda c: {"beta": c.trim_fraction}, reads=("trim_fraction",)),
    "krum": StrategySpec(
        "Krum", lambda c: {"num_malicious_nodes": c.num_malicious}, _krum_needs, reads=("num_malicious",)
    ),
    "bulyan": StrategySpec(
        "Bulyan", lambda c: {"num_malicious_nodes": c.num_malicious}, _bulyan_needs, reads=("num_malicious",)
    ),
}

# The settings only some strategies read, in the order --help lists them.
STRATEGY_FIELDS = ("server_lr", "server_momentum", "proximal_mu", "trim_fraction", "num_malicious")


def strategies_reading(field: str) -> tuple[str, ...]:
    """The strategy names whose Flower strategy reads ``field`` (one of STRATEGY_FIELDS)."""
    return tuple(name for name, spec in STRATEGIES.items() if field in spec.reads)


# The wrapper picks the clients itself (seeded) and gives the inner strategy exactly those: it
# must take all of them and never wait for more.
_TAKE_WHAT_IS_GIVEN = dict(
    fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1
)


def build_strategy(cfg: RunConfig) -> Strategy:
    """The Flower strategy of a run: ``cfg.strategy``, wrapped in Flower's server-side clipping /
    central DP wrapper when ``--clip-norm``, ``--adaptive-clipping`` or ``--dp-noise`` ask for it."""

    name = cfg.strategy
    if name == "fedavg" and cfg.server_lr != 1.0:
        name = "fedavgm"
        spec = StrategySpec("FedAvgM", lambda c: {"server_learning_rate": c.server_lr, "server_momentum": 0.0})
    else:
        spec = STRATEGIES[name]
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)  # FedProx warns about mu = 0; FedAvg about fraction_evaluate
    try:
        inner = spec.build(cfg, **_TAKE_WHAT_IS_GIVEN)
    finally:
        flwr_log.setLevel(level)
    return privacy_wrapper(inner, cfg)


def privacy_wrapper(inner: Strategy, cfg: RunConfig) -> Strategy:
    """Flower's server-side clipping wrappers: fixed (with an RDP accountant when noise is added to
    plain FedAvg, the case Flower accounts for) or adaptive; ``inner`` itself when neither is asked."""
    # here: Flower's strategies load the server runtime (a second); read only when a run starts
    from flwr.serverapp.strategy import (
        DifferentialPrivacyServerSideAdaptiveClipping,
        DifferentialPrivacyServerSideFixedClipping,
        FedAvg,
    )

    sampled = cfg.sampled_per_round()
    if cfg.adaptive_clipping:
        return DifferentialPrivacyServerSideAdaptiveClipping(
            inner,
            noise_multiplier=cfg.dp_noise,
            num_sampled_clients=sampled,
            initial_clipping_norm=cfg.clip_norm or 0.1,
        )
    if cfg.clip_norm <= 0:
        return inner
    accountant = None
    if cfg.dp_noise > 0 and isinstance(inner, FedAvg) and type(inner).aggregate_train is FedAvg.aggregate_train:
        # here: Flower's strategies load the server runtime (a second); read only when a run starts
        from flwr.serverapp import (
            NeighboringRelation,
            PrivacyConfig,
            RdpAccountant,
            SamplingMethod,
        )

        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=cfg.dp_delta,
                population_size=cfg.clients,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )
    return DifferentialPrivacyServerSideFixedClipping(
        inner,
        noise_multiplier=cfg.dp_noise,
        clipping_norm=cfg.clip_norm,
        num_sampled_clients=sampled,
        accountant=accountant,
    )


def privacy_figures(strategy: Strategy) -> dict:
    """Noise standard deviation, clipping norm and (ε at the run's δ) of Flower's DP wrapper, if any."""
    from fedkron.flwr_private import compute_stdv  # here: the registry is read by the run config

    if not hasattr(strategy, "clipping_norm"):
        return {}
    out = {
        "dp_clipping_norm": float(strategy.clipping_norm),
        "dp_noise_stdev": compute_stdv(strategy.noise_multiplier, strategy.clipping_norm, strategy.num_sampled_clients),
    }
    spent = strategy.privacy_spent() if hasattr(strategy, "privacy_spent") else None
    if spent is not None:
        out["dp_epsilon"] = spent.epsilon
    return out
