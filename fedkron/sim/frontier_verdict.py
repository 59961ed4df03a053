"""The frontier's verdict: how many times fewer total bytes (up + down) each adapter method needs than
LoRA to reach the target accuracy, with a 95 % interval over seeds.

Bytes to target are read off a front: the fewest mean total bytes among a group's configs whose mean
final accuracy reaches the target. Their uncertainty comes from the accuracies (a config's bytes
barely move between seeds), so the interval resamples seeds: with replacement, the same resample for
every config (they stay paired), the target derived again from the reference when it was not
given, the ratio recomputed; the interval is the 2.5–97.5 % percentile of those ratios. A resample in
which LoRA never reaches the target counts as an unbounded ratio (``inf``), one in which the method
never does (or neither does) as 0, and the share of resamples where both reach it is stated beside
the interval.
"""

from __future__ import annotations

import math
import random
import statistics

from fedkron.server.ledger import MB

RESAMPLES = 2000


def front_bytes(configs: list[dict], accuracy: dict[str, float], target: float) -> tuple[str, float] | None:
    """(config, mean total bytes) of the cheapest config whose accuracy reaches ``target``; None: none."""
    reached = [c for c in configs if accuracy.get(c["config"], -1.0) >= target]
    best = min(reached, key=lambda c: c["bytes_total"], default=None)
    return None if best is None else (best["config"], float(best["bytes_total"]))


def bytes_ratio(own: list[dict], other: list[dict], accuracy: dict[str, float], target: float) -> float:
    """``other``'s bytes to target over ``own``'s (:func:`ratio_of` their fronts)."""
    return ratio_of(front_bytes(own, accuracy, target), front_bytes(other, accuracy, target))


def ratio_of(mine: tuple[str, float] | None, theirs: tuple[str, float] | None) -> float:
    """``theirs``' bytes over ``mine``: inf when only ``mine`` reached the target, 0 when ``mine``
    did not (nan when neither did)."""
    if mine is None:
        return math.nan if theirs is None else 0.0
    return math.inf if theirs is None else theirs[1] / mine[1]


def resampled(
    own: list[dict], other: list[dict], target: float, reference: dict | None, resamples: int = RESAMPLES
) -> dict:
    """The ratio's percentile interval over seed resamples, the target derived again from
    ``reference`` in each resample when one is given. The seeds are the reference's (else those of
    the config run at most seeds); a config not run at all of them is left out of the resampling."""
    involved = own + other + ([reference] if reference else [])
    seeds = sorted((reference or max(involved, key=lambda c: len(c["per_seed"])))["per_seed"])
    own, other = ([c for c in group if set(seeds) <= set(c["per_seed"])] for group in (own, other))
    if len(seeds) < 2 or not own or not other:
        return {"seeds": len(seeds), "low": None, "high": None, "both_reach": None}
    rng = random.Random(0)  # the same resamples on every report of the same runs
    ratios = []
    for _ in range(resamples):
        draw = [rng.choice(seeds) for _ in seeds]
        acc = {c["config"]: statistics.fmean(c["per_seed"][s]["final"] for s in draw) for c in own + other}
        goal = target if reference is None else statistics.fmean(reference["per_seed"][s]["final"] for s in draw) - 0.01
        ratios.append(bytes_ratio(own, other, acc, goal))
    ordered = sorted(0.0 if math.isnan(r) else r for r in ratios)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    both = sum(0 < r < math.inf for r in ratios) / len(ratios)
    return {"seeds": len(seeds), "low": pick(0.025), "high": pick(0.975), "both_reach": both}


def rivals(method: str, codec: str, configs: list[dict]) -> list[tuple[str, list[dict]]]:
    """What a method's configs at ``codec`` are measured against: the best LoRA at the same codec, the
    best LoRA at any codec, the reference and Flower's recipe (the ``flowertune`` preset)."""
    lora = [c for c in configs if c["method"] == "lora" and c["n"]]
    named = [("the reference", [c for c in lora if c["reference"]])]
    named.append(("FlowerTune (fp32)", [c for c in lora if c["config"] == "flowertune"]))
    groups = [(f"best LoRA at {codec}", [c for c in lora if c["codec"] == codec]), ("best LoRA, any codec", lora)]
    return [(name, group) for name, group in groups + named if group]


def verdict(configs: list[dict], target: float | None, derived: bool) -> list[dict]:
    """Per non-LoRA method and codec, its bytes to ``target`` against each rival (:func:`rivals`):
    both configs, the ratio and its interval. ``derived``: the target is the reference's mean − 1
    point, so each resample derives it again."""
    if target is None:
        return []
    reference = next((c for c in configs if c["reference"] and c["n"]), None) if derived else None
    accuracy = {c["config"]: c["final_mean"] for c in configs if c["final_mean"] is not None}
    rows = []
    methods = sorted({(c["method"], c["codec"]) for c in configs if c["method"] != "lora" and c["n"]})
    for method, codec in methods:
        own = [c for c in configs if (c["method"], c["codec"]) == (method, codec) and c["n"]]
        for name, other in rivals(method, codec, configs):
            mine, theirs = front_bytes(own, accuracy, target), front_bytes(other, accuracy, target)
            rows.append(
                {
                    "method": f"{method} ({codec})",
                    "against": name,
                    "own": mine,
                    "other": theirs,
                    "ratio": ratio_of(mine, theirs),
                    **resampled(own, other, target, reference),
                }
            )
    return rows


def _ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "∞" if value == math.inf else f"{value:.3g}×"


def verdict_table(rows: list[dict], target: float | None) -> str:
    """The verdict as markdown ("" without a target)."""
    if target is None or not rows:
        return ""
    lines = [
        f"## Verdict: total bytes to {100 * target:.1f}%, against LoRA\n",
        "| method | against | its config (MB) | their config (MB) | × fewer bytes | 95 % interval over seeds "
        "| resamples where both reach it |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        own, other = ("not reached" if x is None else f"{x[0]} ({x[1] / MB:.3f})" for x in (r["own"], r["other"]))
        interval = "–" if r["low"] is None else f"{_ratio(r['low'])} – {_ratio(r['high'])}"
        share = "–" if r["both_reach"] is None else f"{100 * r['both_reach']:.0f} % ({r['seeds']} seeds)"
        lines.append(
            f"| {r['method']} | {r['against']} | {own} | {other} | {_ratio(r['ratio'])} | {interval} | {share} |"
        )
    return "\n".join(lines) + "\n"
