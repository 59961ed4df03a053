"""Decoder LLMs, T5 and your own data through the real simulation engine (Ray), one Ray start.

Tiny random models built here (no download): a Llama (the `tiny-llama` alias), a GPT-2 folder
(Conv1D projections) and a T5 folder (classification head, the KronA paper's GLUE setting); an
instruction-tuning file (Alpaca rows) and a CSV classification task of your own.
"""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from fedkron.runconfig.fields import RunConfig

pytestmark = pytest.mark.slow
SMALL = dict(clients=2, rounds=2, local_steps=3, batch_size=4, max_length=48, eval_samples=24, lr=1e-2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from llm_fixtures import bpe_tokenizer, save_folder, tiny_gpt2, tiny_t5

    from fedkron.sim.simulate import prepared, run_many

    root = tmp_path_factory.mktemp("llm")
    gpt2 = save_folder(tiny_gpt2(), bpe_tokenizer(), root / "models" / "gpt2")
    t5_tokenizer = bpe_tokenizer()  # as T5's own: a pad token, and an eos closing every text
    t5_tokenizer.add_special_tokens({"pad_token": "<pad>"})
    from tokenizers.processors import TemplateProcessing

    eos = (t5_tokenizer.eos_token, t5_tokenizer.eos_token_id)
    t5_tokenizer._tokenizer.post_processor = TemplateProcessing(
        single=f"$A {eos[0]}", pair=f"$A {eos[0]} $B {eos[0]}", special_tokens=[eos]
    )
    t5_model = tiny_t5(vocab_size=len(t5_tokenizer))
    t5_model.config.eos_token_id, t5_model.config.pad_token_id = eos[1], t5_tokenizer.pad_token_id
    t5 = save_folder(t5_model, t5_tokenizer, root / "models" / "t5")
    instruct = root / "alpaca.jsonl"
    instruct.write_text(
        "".join(
            json.dumps({"instruction": f"Name colour {i}.", "input": "", "output": ["blue", "red", "green"][i % 3]})
            + "\n"
            for i in range(40)
        )
    )
    custom = root / "reviews.csv"
    with custom.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "verdict"])
        for i in range(60):
            writer.writerow([f"{'great fun' if i % 2 else 'dull and slow'} film number {i}", "pos" if i % 2 else "neg"])
    cfgs = {
        "llama": RunConfig(model="tiny-llama", task="sst2", **SMALL),
        "gpt2": RunConfig(model=gpt2, task="sst2", targets="c_attn,c_fc", **SMALL),
        "t5": RunConfig(model=t5, task="sst2", method="lora", **SMALL),
        "instruct": RunConfig(model="tiny-llama", task="instruct", train_file=str(instruct), **SMALL),
        "custom": RunConfig(
            model="tiny-bert",
            task="custom",
            train_file=str(custom),
            text_column="review",
            label_column="verdict",
            **SMALL,
        ),
    }
    cfgs = {k: prepared(RunConfig(**{**c.__dict__, "out": str(root / k)})) for k, c in cfgs.items()}
    summaries = dict(zip(cfgs, run_many(list(cfgs.values()))))
    return root, cfgs, summaries


def _rows(folder):
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["llama", "gpt2", "t5", "instruct", "custom"])
def test_each_model_and_task_runs_two_rounds_on_ray(runs, name):
    root, cfgs, summaries = runs
    assert summaries[name]["status"] == "completed", summaries[name]["status"]
    rows = _rows(root / name)
    assert [r["round"] for r in rows] == [0, 1, 2] and all(r["accepted"] == 2 for r in rows[1:])
    assert all(r["client_peak_memory_mb"] > 0 for r in rows[1:])
    final = load_file(str(root / name / "adapter" / "adapter_model.safetensors"))
    assert final and all(torch.isfinite(v).all() for v in final.values())


def test_language_models_score_choices_and_round_zero_is_zero_shot(runs):
    from fedkron.data.client_data import eval_data
    from fedkron.models import build_model
    from fedkron.training.local import evaluate_metrics

    root, cfgs, _ = runs
    for name in ("llama", "gpt2"):
        rows = _rows(root / name)
        assert all(0 <= r["accuracy"] <= 1 and 0 <= r["acc_norm"] <= 1 for r in rows)
    # round 0 is the untrained base (adapters at ΔW = 0): the same score as the base scored directly
    cfg = cfgs["llama"]
    scores = evaluate_metrics(build_model(cfg, 0), eval_data(cfg).data)
    assert _rows(root / "llama")[0]["accuracy"] == pytest.approx(scores["accuracy"])


def test_gpt2_adapts_its_conv1d_projections_and_t5_trains_a_classification_head(runs):
    root, _, _ = runs
    gpt2 = load_file(str(root / "gpt2" / "adapter" / "adapter_model.safetensors"))
    assert {k.split(".")[-2] for k in gpt2} >= {"c_attn", "c_fc"} and not any("lm_head" in k for k in gpt2)
    t5 = load_file(str(root / "t5" / "adapter" / "adapter_model.safetensors"))
    assert any(k.startswith("classification_head.") for k in t5) and any(".wi." in k or ".q." in k for k in t5)


def test_instruction_tuning_reports_perplexity_and_writes_samples(runs):
    root, _, _ = runs
    rows = _rows(root / "instruct")
    assert all(
        r["accuracy"] is None and r["perplexity"] == pytest.approx(2.718281828 ** r["loss"], rel=1e-6) for r in rows
    )
    samples = [json.loads(x) for x in (root / "instruct" / "generations.jsonl").read_text().splitlines()]
    assert {s["round"] for s in samples} == {0, 1, 2} and all("### Instruction" in s["prompt"] for s in samples)


def test_a_csv_task_of_your_own_with_string_labels(runs):
    from fedkron.data.client_data import task_spec

    root, cfgs, summaries = runs
    spec = task_spec(cfgs["custom"])
    assert (spec.kind, spec.num_labels, spec.label_names) == ("single", 2, ("neg", "pos"))
    assert summaries["custom"]["eval_note"] == "scored on all 6 held-out rows"  # a seeded 10 % of 60
    assert summaries["custom"]["trainable_params"] > 0
