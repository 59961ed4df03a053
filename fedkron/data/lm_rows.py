"""Task rows as a language model sees them: every task becomes multiple choice scored by the LM
(lm-evaluation-harness style), or instruction tuning.

Multiple-choice tasks keep their choices (PIQA, ARC, HellaSwag, WinoGrande with partial scoring,
OpenBookQA); yes/no and classification tasks are verbalized with lm-eval's GLUE / SuperGLUE
prompts (BoolQ, SST-2, RTE, MRPC) or, for a task of your own, "{text}\\nAnswer:" with the label
names as the choices. Instruction data (Alpaca ``instruction``/``input``/``output`` or a chat
``messages`` list) trains on the response tokens only.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from fedkron.data.lm_prompts import read_instruction_file
from fedkron.data.records import DataNotFoundError

# task name → (prompt key of fedkron.data.lm_prompts, or None for a verbalized template below)
LM_PROMPT = {
    "piqa": "piqa",
    "arc-easy": "arc-easy",
    "arc-challenge": "arc-challenge",
    "hellaswag": "hellaswag",
    "openbookqa": "openbookqa",
    "winogrande": "winogrande",
    "boolq": "boolq",
}
# lm-eval's GLUE prompts: (template over the row's text fields, choices in label order)
VERBALIZED = {
    "sst2": ("{text}\nQuestion: Is this sentence positive or negative?\nAnswer:", ["negative", "positive"]),
    "sentiment": ("{text}\nQuestion: Is this review positive or negative?\nAnswer:", ["negative", "positive"]),
    "rte": ("{text}\nQuestion: {text_pair} True or False?\nAnswer:", ["True", "False"]),
    "mrpc": (
        "Sentence 1: {text}\nSentence 2: {text_pair}\nQuestion: Do both sentences mean the same thing?\nAnswer:",
        ["no", "yes"],
    ),
}


def lm_choice_rows(spec, rows: datasets.Dataset) -> tuple[list[dict], str | None]:
    """(rows with ``context``/``choices``/``label`` — or the fields a prompt needs —, the prompt key
    for ``encode_mc_for_lm`` / ``encode_mc_for_training``)."""
    records = list(rows)
    if spec.name == "winogrande":
        return [_winogrande_partial(r) for r in records], "winogrande"
    if spec.name in LM_PROMPT:
        return records, LM_PROMPT[spec.name]
    if spec.kind == "multiple_choice":
        return records, None  # "Question: ...\nAnswer:"
    template, choices = VERBALIZED.get(spec.name, (None, None))
    if template is None:  # a task of your own: the label names are the answers
        template = "{text}\nQuestion: {text_pair}\nAnswer:" if spec.kind == "pair" else "{text}\nAnswer:"
        choices = list(spec.label_names) or [str(i) for i in range(spec.num_labels)]
    out = [
        {
            "context": template.format(text=r["text"], text_pair=r.get("text_pair", "")),
            "choices": choices,
            "label": int(r["label"]),
        }
        for r in records
    ]
    return out, None


def _winogrande_partial(row: dict) -> dict:
    """lm-eval's partial scoring needs the sentence around its blank and the two options; fedkron's
    rows hold the text before the blank and "option + rest of sentence" per choice. The rest is the
    choices' common suffix from a word boundary (for the few options that end alike, e.g. "Jon" and
    "John", one character too few of the option is scored: a documented approximation)."""
    a, b = row["choices"]
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    rest = a[len(a) - n :] if n else ""
    while rest and not rest[0].isspace() and rest[0] not in ".,;:!?'\"":
        rest = rest[1:]
    options = [c[: len(c) - len(rest)] if rest else c for c in (a, b)]
    return {"sentence": f"{row['context']} _{rest}", "options": options, "label": int(row["label"])}


def instruction_splits(train: str, eval_file: str | None, seed: int) -> datasets.DatasetDict:
    """Instruction rows from JSON / JSONL files; without an eval file, a seeded 10 % is held out."""

    for path in filter(None, (train, eval_file)):
        if not Path(path).is_file():
            raise DataNotFoundError(f"fedkron.data: instruction file {path} does not exist")
    columns = ("instruction", "input", "output", "messages")

    def load(path: str) -> datasets.Dataset:
        rows = read_instruction_file(path)
        return datasets.Dataset.from_list([{k: r.get(k) for k in columns if k in r} for r in rows])

    if eval_file:
        return datasets.DatasetDict(train=load(train), test=load(eval_file))
    split = load(train).train_test_split(test_size=0.1, seed=seed)
    return datasets.DatasetDict(train=split["train"], test=split["test"])
