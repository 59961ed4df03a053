"""The comparison's plots: accuracy against MB communicated (the Pareto picture), accuracy per
round and MB per round; with ``--devices`` runs also accuracy against simulated hours (from round
0, the initial model, at 0 h). Axes carry whole rounds and positive MB only."""

from __future__ import annotations

from pathlib import Path

from fedkron.server.ledger import MB


def comparison_plots(out: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def figure(name: str, draw, legend_size: float | None = None, integer_x: bool = False, **axes) -> None:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for r in rows:
            draw(ax, r)
        if any(r.get("majority_baseline") for r in rows[:1]) and "accuracy" in axes.get("ylabel", ""):
            ax.axhline(100 * rows[0]["majority_baseline"], color="grey", ls=":", lw=1, label="majority class")
        ax.set(**axes)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=legend_size or 8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    def scored(r):
        return [m for m in r["metrics"] if m.get("accuracy") is not None]

    def acc_vs_mb(ax, r):  # training rounds only: round 0 has sent (almost) nothing
        ms = [m for m in scored(r) if m["round"] >= 1]
        ax.plot(
            [(m["bytes_up_total"] + m["bytes_down_total"]) / MB for m in ms],
            [100 * m["accuracy"] for m in ms],
            marker="o",
            label=r["run"],
        )

    def acc_per_round(ax, r):
        ax.plot([m["round"] for m in scored(r)], [100 * m["accuracy"] for m in scored(r)], marker="o", label=r["run"])

    def bytes_per_round(ax, r):
        ms = [m for m in r["metrics"] if m["round"] >= 1]
        ax.plot(
            [m["round"] for m in ms],
            [(m["bytes_up"] + m["bytes_down"]) / MB for m in ms],
            marker="o",
            label=f"{r['run']} (up + down)",
        )

    def acc_vs_hours(ax, r):
        ms = [m for m in scored(r) if m.get("sim_seconds_total") is not None]
        if ms:
            ax.plot(
                [m["sim_seconds_total"] / 3600 for m in ms],
                [100 * m["accuracy"] for m in ms],
                marker="o",
                label=r["run"],
            )

    if any(m.get("sim_seconds_total") is not None for r in rows for m in r["metrics"]):
        mixes = ", ".join(sorted({r["config"].get("devices") or "–" for r in rows}))
        figure(
            "accuracy_vs_sim_hours.png",
            acc_vs_hours,
            xlabel="simulated hours so far",
            ylabel="held-out accuracy (%)",
            title=f"Accuracy vs simulated time ({mixes})",
        )
    figure(
        "accuracy_vs_mb.png",
        acc_vs_mb,
        xscale="log",
        xlabel="MB communicated so far (up + down, log scale)",
        ylabel="held-out accuracy (%)",
        title="Accuracy vs communication",
    )
    figure(
        "accuracy_per_round.png",
        acc_per_round,
        integer_x=True,
        xlabel="round",
        ylabel="held-out accuracy (%)",
        title="Accuracy per round",
    )
    figure(
        "bytes_per_round.png",
        bytes_per_round,
        integer_x=True,
        yscale="log",
        xlabel="round",
        ylabel="MB per round (log scale)",
        title="Bytes per round, both ways",
    )
