"""Seconds per question of LM-scored multiple choice: the per-choice scorer against the shared-prefix one.

    python benchmarks/bench_llm_scoring.py                         # SmolLM2-135M, 30 questions per task
    python benchmarks/bench_llm_scoring.py --tasks arc-easy --questions 60 --threads 1

Both scorers (``score_mc(..., shared_prefix=False)``: every choice whole, 16 sequences a batch, full
logits; ``shared_prefix=True``: each question's prefix once, whole questions batched, the output
layer only where a next token is scored) run on the same first ``--questions`` held-out questions
of each task, interleaved in chunks of ``--chunk`` questions (the order alternating chunk by chunk,
so a change in the machine's load falls on both). Reports wall and CPU seconds per question, the
speed-up, the largest log-likelihood difference (must be ≤ 1e-4) and whether acc / acc_norm agree.
Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from fedkron.data.lm_encode import encode_mc_for_lm
from fedkron.data.lm_rows import lm_choice_rows
from fedkron.data.loaders import load_splits
from fedkron.data.tasks import get_task
from fedkron.models.causal_lm import load_causal_lm, prepare_tokenizer
from fedkron.runconfig.fields import default_data_dir
from fedkron.training.language_model import mc_loglikelihoods, mc_metrics
from fedkron.training.mc_scoring import mc_loglikelihoods_shared

TASKS = ("arc-easy", "piqa", "hellaswag")


def encoded_questions(task: str, tokenizer, count: int, max_length: int, data_dir: str) -> dict:
    rows = load_splits(task, data_dir=data_dir)["test"]
    rows = rows.select(range(min(count, len(rows))))
    choice_rows, prompt = lm_choice_rows(get_task(task), rows)
    return encode_mc_for_lm(choice_rows, tokenizer, max_length, task=prompt)


def questions(encoded: dict, begin: int, end: int) -> dict:
    """The encoded rows of questions begin..end-1 (row indices renumbered from 0)."""
    keep = (encoded["row_index"] >= begin) & (encoded["row_index"] < end)
    out = {k: v[keep] for k, v in encoded.items() if k != "gold"}
    out["row_index"] = out["row_index"] - begin
    out["gold"] = encoded["gold"][begin:end]
    return out


def timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def compare(model, encoded: dict, chunk: int) -> dict:
    """Both scorers over the same questions, chunk by chunk, the order alternating."""
    scorers = {
        "per_choice": lambda e: mc_loglikelihoods(model, e, 16),
        "shared": lambda e: mc_loglikelihoods_shared(model, e),
    }
    n = len(encoded["gold"])
    lls = {name: [] for name in scorers}
    spent = {name: [0.0, 0.0] for name in scorers}
    for i, begin in enumerate(range(0, n, chunk)):
        part = questions(encoded, begin, min(begin + chunk, n))
        for name in sorted(scorers, reverse=bool(i % 2)):
            out, wall, cpu = timed(scorers[name], part)
            lls[name].append(out)
            spent[name][0] += wall
            spent[name][1] += cpu
    lls = {name: torch.cat(parts) for name, parts in lls.items()}
    metrics = {name: mc_metrics(v, encoded) for name, v in lls.items()}
    same = all(metrics["shared"][k] == metrics["per_choice"][k] for k in ("acc", "acc_norm", "acc_bytes"))
    result = {"questions": n, "sequences": len(encoded["row_index"]), "metrics_identical": same}
    result["max_ll_difference"] = float((lls["shared"] - lls["per_choice"]).abs().max())
    for name, (wall, cpu) in spent.items():
        result[f"{name}_wall_s_per_question"] = wall / n
        result[f"{name}_cpu_s_per_question"] = cpu / n
    result["speedup_wall"] = spent["per_choice"][0] / spent["shared"][0]
    result["speedup_cpu"] = spent["per_choice"][1] / spent["shared"][1]
    result["acc"], result["acc_norm"] = metrics["shared"]["acc"], metrics["shared"]["acc_norm"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--questions", type=int, default=30)
    p.add_argument("--chunk", type=int, default=10, help="questions per interleaved chunk")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="smollm2-135m")
    args = p.parse_args()

    data_dir = default_data_dir()
    if not data_dir:
        sys.exit("needs the real task data: set FEDKRON_DATA_DIR (the shared data folder)")
    torch.set_num_threads(args.threads)
    model, tokenizer = load_causal_lm(args.model)
    tokenizer = prepare_tokenizer(tokenizer, model)
    results = {}
    for task in args.tasks.split(","):
        encoded = encoded_questions(task, tokenizer, args.questions, args.max_length, data_dir)
        compare(model, questions(encoded, 0, 1), 1)  # warm-up: first calls allocate
        results[task] = compare(model, encoded, args.chunk)
        print(f"  {task}: {results[task]}", file=sys.stderr, flush=True)
    print(f"\n{args.model}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| task | questions | per-choice s/q (CPU) | shared s/q (CPU) | speed-up wall (CPU) | max Δ ll | same acc |")
    print("|---|---|---|---|---|---|---|")
    for task, r in results.items():
        print(
            f"| {task} | {r['questions']} | {r['per_choice_wall_s_per_question']:.3f} "
            f"({r['per_choice_cpu_s_per_question']:.3f}) | {r['shared_wall_s_per_question']:.3f} "
            f"({r['shared_cpu_s_per_question']:.3f}) | {r['speedup_wall']:.2f}× ({r['speedup_cpu']:.2f}×) | "
            f"{r['max_ll_difference']:.1e} | {'yes' if r['metrics_identical'] else 'NO'} |"
        )
    print(json.dumps({"config": vars(args), "results": results}))


if __name__ == "__main__":
    main()
