"""Prompts for causal LMs: lm-evaluation-harness multiple-choice templates, instruction formatting
(chat template or Alpaca), and a reader for the LLM-Adapters commonsense instruction JSON.

A multiple-choice row becomes one (context, continuation) request per choice, as lm-eval builds
them (``lm_eval/tasks/<task>/*.yaml``, target delimiter " "). Rows are fedkron's normalised
``{context, choices, label}``; BoolQ also takes the pair layout ``{text, text_pair, label}`` and
WinoGrande needs ``sentence`` (raw, with ``_``) and ``options`` for lm-eval's partial scoring.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


class PromptError(ValueError):
    """A row or file that does not have the fields its prompt needs."""


def _question_answer(row):  # piqa, arc_easy, arc_challenge: "Question: {{q}}\nAnswer:"
    return _same_context(f"Question: {row['context']}\nAnswer:", row["choices"])


def _plain(row):  # hellaswag ("{{query}}", already preprocessed), openbookqa ("question_stem")
    return _same_context(row["context"], row["choices"])


def _social_iqa(row):  # social_iqa: "Q: {{context}} {{question}}\nA:" (LLM-Adapters joins the two)
    return _same_context(f"Q: {row['context']}\nA:", row["choices"])


def _boolq(row):
    """super_glue/boolq: "{{passage}}\nQuestion: {{question}}?\nAnswer:", choices ["no", "yes"]."""
    question = row.get("context", row.get("text"))
    passage = row.get("passage", row.get("text_pair"))
    if question is None:
        raise PromptError(f"boolq row needs 'context' or 'text' (the question); it has {sorted(row)}")
    question = question.strip().rstrip("?")
    prompt = f"Question: {question}?\nAnswer:" if not passage else f"{passage}\nQuestion: {question}?\nAnswer:"
    return _same_context(prompt, row.get("choices") or ["no", "yes"])


def _winogrande(row):
    """lm-eval's partial scoring: context_i = sentence[:blank] + option_i, the shared continuation
    " " + the rest of the sentence; its ``doc_to_choice`` (used for lengths) are the contexts."""
    if "sentence" not in row or "options" not in row:
        raise PromptError(
            "winogrande rows need 'sentence' (with the '_' blank) and 'options' (option1, option2) for "
            f"lm-eval's partial scoring; this row has {sorted(row)}"
        )
    sentence = row["sentence"]
    if "_" not in sentence:
        raise PromptError(f"winogrande sentence has no '_' blank: {sentence[:80]!r}")
    cut = sentence.index("_")
    contexts = [sentence[:cut] + option for option in row["options"]]
    rest = " " + sentence[cut + 1 :].strip()
    return contexts, [rest] * len(contexts), contexts


def _same_context(context: str, choices: list[str]):
    return [context] * len(choices), [" " + c for c in choices], list(choices)


PROMPTS = {
    "piqa": _question_answer,
    "arc-easy": _question_answer,
    "arc-challenge": _question_answer,
    "hellaswag": _plain,
    "openbookqa": _plain,
    "boolq": _boolq,
    "winogrande": _winogrande,
    "social-iqa": _social_iqa,
}


def mc_requests(row: dict, task: str | None = None) -> tuple[list[str], list[str], list[str]]:
    """(contexts, continuations, choice strings) of one row, one entry per choice.

    ``task=None`` uses the generic "Question: ...\\nAnswer:" template. The choice strings are what
    lm-eval's ``acc_norm`` divides by (their length in characters, without the delimiter).
    """
    if task is not None and task not in PROMPTS:
        known = ", ".join(sorted(PROMPTS))
        raise PromptError(f"no multiple-choice prompt for task {task!r}; known: {known} (or None)")
    if task != "boolq" and task != "winogrande" and not {"context", "choices"} <= set(row):
        raise PromptError(f"multiple-choice row needs 'context' and 'choices'; it has {sorted(row)}")
    return PROMPTS.get(task, _question_answer)(row)


# --- instruction tuning ---------------------------------------------------------------------------

ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def _messages(row: dict) -> list[dict]:
    if "messages" in row:
        messages = list(row["messages"])
        if not messages or messages[-1].get("role") != "assistant":
            raise PromptError("a 'messages' row must end with an assistant turn (the response that is trained)")
        return messages
    if "instruction" not in row or "output" not in row:
        raise PromptError(
            f"instruction row needs 'instruction' and 'output' (Alpaca) or 'messages'; it has {sorted(row)}"
        )
    user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def format_instruction(row: dict, tokenizer, use_chat_template: bool | None = None) -> tuple[str, str]:
    """(prompt, response) texts: the loss is on the response only.

    With a chat template (``use_chat_template=None``: when the tokenizer has one) the response is
    the template's rendering of the final assistant turn, end-of-turn marker included; otherwise
    the Stanford Alpaca prompt and ``output`` + eos (so the model learns to stop).
    """
    messages = _messages(row)
    if use_chat_template is None:
        use_chat_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template:
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise PromptError(
                f"chat template of {tokenizer.name_or_path!r} does not render the prompt as a prefix of the dialogue"
            )
        return prompt, full[len(prompt) :]
    if "messages" in row:
        if len(messages) != 2 or messages[0].get("role") != "user":
            raise PromptError("without a chat template only [user, assistant] message rows can be formatted")
        instruction, extra, output = messages[0]["content"], "", messages[1]["content"]
    else:
        instruction, extra, output = row["instruction"], row.get("input") or "", row["output"]
    template = ALPACA_INPUT if extra else ALPACA
    return template.format(instruction=instruction, input=extra), output + (tokenizer.eos_token or "")


def read_instruction_file(path: str | Path) -> list[dict]:
    """Rows of a JSON array or JSON-lines file (Alpaca ``instruction/input/output`` or chat ``messages``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise PromptError(f"{path}: not JSON or JSON lines ({err})") from err
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not ("messages" in row or {"instruction", "output"} <= set(row)):
            raise PromptError(f"{path}: row {i} needs 'instruction' and 'output' or 'messages'")
    return rows


# --- LLM-Adapters commonsense JSON ----------------------------------------------------------------

LLM_ADAPTERS_FILES = {
    "arc-easy": "ARC-Easy",
    "arc-challenge": "ARC-Challenge",
    "boolq": "boolq",
    "openbookqa": "openbookqa",
    "piqa": "piqa",
    "social-iqa": "social_i_qa",
    "winogrande": "winogrande",
    "hellaswag": "hellaswag",
}
_PREFIX = re.compile(r"Please [^:]*: ")
_FORMAT = re.compile(r"\s*Answer format:\s*(\S+)\s*$")
_NUMBERED = re.compile(r"([a-z]+)(\d+)")


def llm_adapters_to_mc(record: dict) -> dict:
    """``{context, choices, label}`` recovered from the instruction text (``AnswerN: ...``,
    ``SolutionN:``, ``OptionN:``, ``EndingN:``, or true/false). WinoGrande rows also get
    ``sentence`` and ``options``; BoolQ rows become choices ["no", "yes"] (lm-eval's)."""
    text, answer = record.get("instruction", ""), str(record.get("answer", "")).strip()
    fmt = _FORMAT.search(text)
    if fmt is None:
        raise PromptError(f"LLM-Adapters record has no 'Answer format:' line: {text[:80]!r}")
    keys = fmt.group(1).split("/")
    if answer not in keys:
        raise PromptError(f"LLM-Adapters answer {answer!r} is not one of {keys}")
    body = text[: fmt.start()]
    prefix = _PREFIX.match(body)
    body = body[prefix.end() :] if prefix else body
    if keys == ["true", "false"]:
        return {"context": body.strip(), "choices": ["no", "yes"], "label": int(answer == "true")}
    if not all(_NUMBERED.fullmatch(k) for k in keys):
        raise PromptError(f"LLM-Adapters answer format {fmt.group(1)!r} is neither numbered choices nor true/false")
    markers = [k[0].upper() + k[1:] + ": " for k in keys]
    cuts, end = [], len(body)
    for marker in reversed(markers):  # from the end: a question may quote anything, the choices do not
        at = body.rfind(marker, 0, end)
        if at < 0:
            raise PromptError(f"LLM-Adapters instruction lacks {marker.strip()!r}: {text[:80]!r}")
        cuts.append(at)
        end = at
    cuts.reverse()
    choices = [body[c + len(m) : e].strip() for c, m, e in zip(cuts, markers, cuts[1:] + [len(body)], strict=True)]
    question = body[: cuts[0]].strip()
    row = {"context": question, "choices": choices, "label": keys.index(answer)}
    if keys[0].startswith("option") and "_" in question:  # WinoGrande: fill in the blank
        cut = question.index("_")
        rest = question[cut + 1 :]
        row.update(
            context=question[:cut].strip(), choices=[c + rest for c in choices], sentence=question, options=choices
        )
    return row


def llm_adapters_to_instruction(record: dict) -> dict:
    return {"instruction": record["instruction"], "input": record.get("input", ""), "output": record["output"]}


def load_llm_adapters(task: str, split: str, data_dir: str | Path, kind: str = "mc") -> list[dict]:
    """Rows of ``<data_dir>/<File>__<split>.json``: multiple choice (``kind="mc"``) or instruction rows."""
    if task not in LLM_ADAPTERS_FILES:
        raise PromptError(f"no LLM-Adapters file for task {task!r}; known: {', '.join(sorted(LLM_ADAPTERS_FILES))}")
    if kind not in ("mc", "instruction"):
        raise PromptError(f"kind must be 'mc' or 'instruction', got {kind!r}")
    path = Path(data_dir) / f"{LLM_ADAPTERS_FILES[task]}__{split}.json"
    if not path.is_file():
        raise PromptError(f"LLM-Adapters file {path} does not exist")
    records = json.loads(path.read_text(encoding="utf-8"))
    convert = llm_adapters_to_mc if kind == "mc" else llm_adapters_to_instruction
    out = []
    for i, record in enumerate(records):
        try:
            out.append(convert(record))
        except (PromptError, KeyError) as err:
            raise PromptError(f"{path}: record {i}: {err}") from err
    return out
