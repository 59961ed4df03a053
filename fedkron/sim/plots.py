"""The comparison's plots: accuracy against MB communicated (the Pareto picture), accuracy per
round and MB per round; with ``--devices`` runs also accuracy against simulated hours (from round
0, the initial model, at 0 h). Axes carry whole rounds and positive MB only."""

from __future__ import annotations

import math
from pathlib import Path

from fedkron.server.ledger import MB


def _scored(run: dict) -> list[dict]:
    return [m for m in run["metrics"] if m.get("accuracy") is not None]


def _acc_vs_mb(ax, run: dict) -> None:  # training rounds only: round 0 has sent (almost) nothing
    ms = [m for m in _scored(run) if m["round"] >= 1]
    mbs = [(m["bytes_up_total"] + m["bytes_down_total"]) / MB for m in ms]
    ax.plot(mbs, [100 * m["accuracy"] for m in ms], marker="o", label=run["run"])


def _acc_per_round(ax, run: dict) -> None:
    ms = _scored(run)
    ax.plot([m["round"] for m in ms], [100 * m["accuracy"] for m in ms], marker="o", label=run["run"])


def _bytes_per_round(ax, run: dict) -> None:
    ms = [m for m in run["metrics"] if m["round"] >= 1]
    mbs = [(m["bytes_up"] + m["bytes_down"]) / MB for m in ms]
    ax.plot([m["round"] for m in ms], mbs, marker="o", label=f"{run['run']} (up + down)")


def _acc_vs_hours(ax, run: dict) -> None:
    ms = [m for m in _scored(run) if m.get("sim_seconds_total") is not None]
    if ms:
        hours = [m["sim_seconds_total"] / 3600 for m in ms]
        ax.plot(hours, [100 * m["accuracy"] for m in ms], marker="o", label=run["run"])


def _figure(out: Path, rows: list[dict], name: str, draw, integer_x: bool = False, **axes) -> None:
    """One plot of every run, the majority class drawn on accuracy axes, saved as ``out/name``."""
    import matplotlib  # here: matplotlib takes a second to import and only reports draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # here: matplotlib takes a second to import and only reports draw
    from matplotlib.ticker import MaxNLocator  # here: matplotlib takes a second to import and only reports draw

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for run in rows:
        draw(ax, run)
    if rows and rows[0].get("majority_baseline") and "accuracy" in axes.get("ylabel", ""):
        ax.axhline(100 * rows[0]["majority_baseline"], color="grey", ls=":", lw=1, label="majority class")
    ax.set(**axes)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)


def comparison_plots(out: Path, rows: list[dict]) -> None:
    """Every plot of the comparison into ``out`` (accuracy vs simulated hours only with --devices)."""
    accuracy = "held-out accuracy (%)"
    if any(m.get("sim_seconds_total") is not None for r in rows for m in r["metrics"]):
        mixes = ", ".join(sorted({r["config"].get("devices") or "–" for r in rows}))
        _figure(
            out,
            rows,
            "accuracy_vs_sim_hours.png",
            _acc_vs_hours,
            xlabel="simulated hours so far",
            ylabel=accuracy,
            title=f"Accuracy vs simulated time ({mixes})",
        )
    _figure(
        out,
        rows,
        "accuracy_vs_mb.png",
        _acc_vs_mb,
        xscale="log",
        xlabel="MB communicated so far (up + down, log scale)",
        ylabel=accuracy,
        title="Accuracy vs communication",
    )
    _figure(
        out,
        rows,
        "accuracy_per_round.png",
        _acc_per_round,
        integer_x=True,
        xlabel="round",
        ylabel=accuracy,
        title="Accuracy per round",
    )
    _figure(
        out,
        rows,
        "bytes_per_round.png",
        _bytes_per_round,
        integer_x=True,
        yscale="log",
        xlabel="round",
        ylabel="MB per round (log scale)",
        title="Bytes per round, both ways",
    )


def label_offsets(points: list[tuple[float, float]], near: tuple[float, float] = (0.12, 1.5)) -> list[tuple[int, int]]:
    """Text offsets (points) for labels at ``points`` (MB on a log axis, accuracy %): a label that
    would sit within ``near`` (decades of MB, accuracy points) of an earlier one is moved down a line
    for each such neighbour, so labels of configs that sit close do not print over each other."""
    placed: list[tuple[float, float, int]] = []
    out = []
    for mb, acc in points:
        x = math.log10(mb)
        taken = {line for px, py, line in placed if abs(px - x) < near[0] and abs(py - acc) < near[1]}
        line = next(k for k in range(len(placed) + 1) if k not in taken)
        placed.append((x, acc, line))
        out.append((3, 3 - 8 * line))
    return out


def frontier_plot(path: Path, configs: list[dict], fronts: dict[str, list[str]], target: float | None) -> None:
    """Mean final accuracy (95 % interval as error bar) against mean total MB (log x), a marker and
    colour per method, each method's Pareto front as a line, the target as a horizontal line."""
    import matplotlib  # here: matplotlib takes a second to import and only reports draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # here: matplotlib takes a second to import and only reports draw
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # here: as matplotlib above

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = "osD^v<>P*X"
    by_name = {c["config"]: c for c in configs}
    for i, method in enumerate(sorted({c["method"] for c in configs})):
        colour = f"C{i}"
        mine = [c for c in configs if c["method"] == method and c["final_mean"] is not None and c["mb_total"] > 0]
        for c in mine:
            ci = 100 * c["final_ci"] if c["final_ci"] is not None else 0.0
            ax.errorbar(c["mb_total"], 100 * c["final_mean"], yerr=ci, fmt=markers[i % len(markers)], color=colour,
                        capsize=3, label=method if c is mine[0] else None)  # fmt: skip
        front = [by_name[name] for name in fronts.get(method, []) if by_name[name]["mb_total"] > 0]
        if len(front) > 1:
            ax.plot([c["mb_total"] for c in front], [100 * c["final_mean"] for c in front], color=colour, lw=1)
    drawn = [c for c in configs if c["final_mean"] is not None and c["mb_total"] > 0]
    points = [(c["mb_total"], 100 * c["final_mean"]) for c in drawn]
    for c, xy, offset in zip(drawn, points, label_offsets(points)):
        ax.annotate(c["config"], xy, fontsize=6, xytext=offset, textcoords="offset points")
    if target is not None:
        ax.axhline(100 * target, color="grey", ls="--", lw=1, label=f"target {100 * target:.1f}%")
    ax.set(xscale="log", xlabel="total MB (up + down, mean over seeds, log scale)",
           ylabel="final held-out accuracy (%)", title="Bytes–accuracy frontier")  # fmt: skip
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    low, high = ax.get_ylim()  # an interval past 0 % or 100 % is drawn up to the edge
    ax.set_ylim(max(low, 0.0), min(high, 100.0))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
