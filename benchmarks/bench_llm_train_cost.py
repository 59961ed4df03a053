"""Seconds per local training step of SmolLM2-135M on ARC-Easy, the CPU options side by side.

    python benchmarks/bench_llm_train_cost.py                     # batch 8, 3 measured steps per option
    python benchmarks/bench_llm_train_cost.py --steps 5 --options trimmed-answer-logits,threads-1

Kron-LoRA (rank 8) on SmolLM2-135M, AdamW at 5e-4 (``bench_llm_compare``'s setting), batches of
``--batch-size`` ARC-Easy training rows encoded as the simulation does (prompt + gold answer,
``--max-length`` 128, loss on the answer tokens). The options share one model: each keeps its own
adapter values and optimizer, swapped in before its step, and they take their steps in turn (the
order rotating), on the same batches, so a change in the machine's load falls on all of them:

* ``padded-full-logits``: every batch padded to ``--max-length``, logits at every position;
* ``trimmed-full-logits``: each batch cut to its longest row (the loop before answer-only logits);
* ``trimmed-answer-logits``: also the output layer only at the answer positions (the default now);
* ``threads-1``: that with one torch thread instead of ``--threads``;
* ``bf16-autocast``: that under ``torch.autocast("cpu", torch.bfloat16)``.

Prints each option's median wall and CPU seconds per step (after one warm-up step), its losses, and
one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from fedkron.adapters import inject
from fedkron.data.lm_encode import encode_mc_for_training
from fedkron.data.lm_rows import lm_choice_rows
from fedkron.data.loaders import load_splits
from fedkron.data.tasks import get_task
from fedkron.models.causal_lm import lm_adapter_config, load_causal_lm, prepare_tokenizer
from fedkron.runconfig.fields import default_data_dir
from fedkron.training.common import index_batches
from fedkron.training.language_model import causal_lm_loss

OPTIONS = ("padded-full-logits", "trimmed-full-logits", "trimmed-answer-logits", "threads-1", "bf16-autocast")


def full_logits_loss(model, batch: dict) -> torch.Tensor:
    """The loss as computed before: full-vocabulary logits at every position, then the answer's."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    return F.cross_entropy(logits[keep].float(), labels[keep])


def option_step(name: str, threads: int):
    """(loss function, trim the batch?, thread count, context manager) of one option."""
    loss_fn = full_logits_loss if name.endswith("full-logits") else causal_lm_loss
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if name == "bf16-autocast" else contextlib.nullcontext()
    return loss_fn, name != "padded-full-logits", 1 if name == "threads-1" else threads, autocast


def training_batches(tokenizer, args) -> tuple[dict, list[torch.Tensor]]:
    rows = load_splits("arc-easy", data_dir=args.data_dir)["train"]
    choice_rows, prompt = lm_choice_rows(get_task("arc-easy"), rows)
    data = encode_mc_for_training(choice_rows, tokenizer, args.max_length, task=prompt)
    pad = args.max_length - data["input_ids"].shape[1]  # the set's longest row may be shorter
    data["input_ids"] = F.pad(data["input_ids"], (0, pad), value=tokenizer.pad_token_id)
    data["attention_mask"] = F.pad(data["attention_mask"], (0, pad))
    data["labels"] = F.pad(data["labels"], (0, pad), value=-100)
    generator = torch.Generator().manual_seed(args.seed)
    return data, list(index_batches(len(data["input_ids"]), args.batch_size, args.steps + 1, generator))


def measure(model, data: dict, batches: list, options: list[str], args) -> dict:
    """Every option's step on every batch, in turn; per option: wall and CPU seconds, losses, tokens."""
    params = [p for p in model.parameters() if p.requires_grad]
    values = {o: [p.detach().clone() for p in params] for o in options}
    optimizers = {o: torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0) for o in options}
    out = {o: {"wall_s": [], "cpu_s": [], "loss": [], "tokens": []} for o in options}
    for step, idx in enumerate(batches):
        for o in options[step % len(options) :] + options[: step % len(options)]:
            loss_fn, trim, threads, autocast = option_step(o, args.threads)
            batch = {k: v[idx] for k, v in data.items()}
            if trim:
                batch = {k: v[:, : int(batch["attention_mask"].sum(1).max())] for k, v in batch.items()}
            with torch.no_grad():
                for p, v in zip(params, values[o], strict=True):
                    p.copy_(v)
            torch.set_num_threads(threads)
            wall, cpu = time.perf_counter(), time.process_time()
            with autocast:
                loss = loss_fn(model, batch)
            loss.backward()
            optimizers[o].step()
            optimizers[o].zero_grad(set_to_none=True)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            values[o] = [p.detach().clone() for p in params]
            record = out[o]
            record["loss"].append(loss.item())
            record["tokens"].append(int(batch["attention_mask"].numel()))
            if step:  # the first step warms up kernels and allocates the optimizer's state
                record["wall_s"].append(wall)
                record["cpu_s"].append(cpu)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--options", default=",".join(OPTIONS))
    p.add_argument("--steps", type=int, default=3, help="measured steps per option (after one warm-up)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.data_dir = default_data_dir()
    if not args.data_dir:
        sys.exit("needs the real task data: set FEDKRON_DATA_DIR (the shared data folder)")
    model, tokenizer = load_causal_lm("smollm2-135m")
    tokenizer = prepare_tokenizer(tokenizer, model)
    model = inject(model, lm_adapter_config("kron-lora", args.rank, 16.0, init_seed=args.seed)).train()
    data, batches = training_batches(tokenizer, args)
    options = args.options.split(",")
    results = measure(model, data, batches, options, args)
    print(f"\nSmolLM2-135M, Kron-LoRA r{args.rank}, ARC-Easy, batch {args.batch_size}, load {os.getloadavg()[0]:.1f}\n")
    print("| option | wall s / step | CPU s / step | tokens / batch (padded) | losses |")
    print("|---|---|---|---|---|")
    for o, r in results.items():
        losses = ", ".join(f"{x:.5f}" for x in r["loss"])
        print(
            f"| {o} | {statistics.median(r['wall_s']):.2f} | {statistics.median(r['cpu_s']):.2f} | "
            f"{statistics.mean(r['tokens']):.0f} | {losses} |"
        )
    config = {k: v for k, v in vars(args).items() if k != "data_dir"}
    print(json.dumps({"config": config, "results": results}))


if __name__ == "__main__":
    main()
