"""Forward+backward time of one adapted layer: Kron-LoRA vs LoRA-8 vs PEFT LoKr vs the frozen layer.

Run: ``python benchmarks/bench_adapter_speed.py [--tokens 512] [--repeats 5]``. Every variant gets the
same input (batch×seq tokens, requires_grad so dX is computed as inside a network) and the same
upstream gradient. Variants are interleaved per repeat and the best (min) time is reported, the
estimator least hurt by other processes on a shared CPU (medians are in the JSON too). A per-shape
time budget keeps the whole run near 3 minutes even on a loaded machine. Prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from fedkron.adapters import AdapterConfig, inject

SHAPES = [(768, 768), (3072, 768), (4096, 4096), (14336, 4096)]  # (d_out, d_in)


class One(nn.Module):
    """A one-layer model so inject() and PEFT see a named target."""

    def __init__(self, d_out: int, d_in: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d_in, d_out, bias=False)])

    def forward(self, x):
        return self.layers[0](x)


def variants(d_out: int, d_in: int) -> dict[str, nn.Module]:
    import peft

    torch.manual_seed(0)
    frozen = One(d_out, d_in).requires_grad_(False)
    built = {"frozen": frozen}
    for name, config in {
        "kron-lora": AdapterConfig(method="kron-lora", rank=8, modules_to_save=None),
        "lora-8": AdapterConfig(method="lora", rank=8, modules_to_save=None),
    }.items():
        model = One(d_out, d_in)
        model.load_state_dict(frozen.state_dict())
        built[name] = inject(model, config)
    lokr = One(d_out, d_in)
    lokr.load_state_dict(frozen.state_dict())
    built["peft-lokr"] = peft.get_peft_model(lokr, peft.LoKrConfig(r=8, alpha=16, target_modules=["layers.0"]))
    for model in built.values():  # non-zero factors: the same work as mid-training
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.02)
    return built


def step_seconds(fn, x: torch.Tensor, upstream: torch.Tensor) -> float:
    x = x.detach().requires_grad_(True)
    start = time.perf_counter()
    fn(x).backward(upstream)
    return time.perf_counter() - start


def time_all(fns: dict, x, upstream, repeats: int, budget_s: float) -> dict[str, list[float]]:
    """Interleaved repeats (≥ 2, more while within budget) after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        step_seconds(fn, x, upstream)
    start = time.perf_counter()
    for done in range(repeats):
        if done >= 2 and time.perf_counter() - start > budget_s:
            break
        for name, fn in fns.items():
            times[name].append(step_seconds(fn, x, upstream))
    return times


def adapter_paths(models: dict[str, nn.Module]) -> dict:
    """The adapter term alone (what each method adds on top of the frozen matmul)."""
    kron, lora = models["kron-lora"].layers[0], models["lora-8"].layers[0]
    lokr = models["peft-lokr"].base_model.model.layers[0]
    return {
        "kron-lora": lambda x: kron.scaling * kron.adapter_output(x),
        "lora-8": lambda x: lora.scaling * lora.adapter_output(x),
        "peft-lokr": lambda x: lokr._get_delta_activations("default", x),  # builds ΔW = kron(w1, w2)
    }


def bench(tokens: int, repeats: int, budget_s: float) -> list[dict]:
    rows = []
    for d_out, d_in in SHAPES:
        models = variants(d_out, d_in)
        x, upstream = torch.randn(tokens, d_in), torch.randn(tokens, d_out)
        whole = time_all(models, x, upstream, repeats, budget_s)
        alone = time_all(adapter_paths(models), x, upstream, 4 * repeats, budget_s / 4)
        ms = {name: 1e3 * min(t) for name, t in whole.items()}
        adapter_ms = {name: 1e3 * min(t) for name, t in alone.items()}
        rows.append(
            {
                "d_out": d_out,
                "d_in": d_in,
                "tokens": tokens,
                "repeats": len(whole["frozen"]),
                "ms": {k: round(v, 3) for k, v in ms.items()},
                "median_ms": {k: round(1e3 * statistics.median(t), 3) for k, t in whole.items()},
                "adapter_only_ms": {k: round(v, 3) for k, v in adapter_ms.items()},
                "kron_over_lora8": round(ms["kron-lora"] / ms["lora-8"], 3),
                "lokr_over_kron": round(ms["peft-lokr"] / ms["kron-lora"], 3),
                "adapter_only_kron_over_lora8": round(adapter_ms["kron-lora"] / adapter_ms["lora-8"], 3),
                "adapter_only_lokr_over_kron": round(adapter_ms["peft-lokr"] / adapter_ms["kron-lora"], 3),
            }
        )
        del models
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4 * 128, help="batch × sequence length")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=25.0, help="seconds of repeats per shape (≥ 2 repeats)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = bench(args.tokens, args.repeats, args.budget)
    header = (
        f"{'d_out×d_in':>12} {'frozen':>9} {'kron-lora':>10} {'lora-8':>9} {'peft-lokr':>10}  kron/lora8  lokr/kron"
    )
    print(f"fwd+bwd, {args.tokens} tokens, {args.threads} threads, best ms of up to {args.repeats} (interleaved)")
    sections = (
        ("whole layer (frozen matmul + adapter)", "ms", ""),
        ("adapter term alone", "adapter_only_ms", "adapter_only_"),
    )
    for title, key, ratio in sections:
        print(f"\n{title}\n{header}")
        for r in rows:
            m = r[key]
            print(
                f"{r['d_out']:>6}×{r['d_in']:<5} {m.get('frozen', float('nan')):>9.2f} {m['kron-lora']:>10.2f} "
                f"{m['lora-8']:>9.2f} {m['peft-lokr']:>10.2f}  {r[ratio + 'kron_over_lora8']:>10.3f} "
                f"{r[ratio + 'lokr_over_kron']:>10.3f}"
            )
    target = next(r for r in rows if (r["d_out"], r["d_in"]) == (4096, 4096))
    summary = {
        "benchmark": "adapter_speed",
        "device": "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "rows": rows,
        "targets": {
            "kron_le_1.05x_lora8_all_shapes": all(r["kron_over_lora8"] <= 1.05 for r in rows),
            "lokr_ge_3x_kron_at_4096": target["lokr_over_kron"] >= 3.0,
            "adapter_only_kron_le_1.05x_lora8_all_shapes": all(r["adapter_only_kron_over_lora8"] <= 1.05 for r in rows),
            "adapter_only_lokr_ge_3x_kron_at_4096": target["adapter_only_lokr_over_kron"] >= 3.0,
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
