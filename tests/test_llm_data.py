"""Causal-LM data: lm-eval prompts, context/continuation split, -100 masks, instructions, LLM-Adapters JSON."""

import json

import pytest
import torch
from llm_fixtures import EOS, bpe_tokenizer

from fedkron.data.lm_encode import (
    encode_instructions,
    encode_mc_for_lm,
    encode_mc_for_training,
    encode_pairs,
)
from fedkron.data.lm_prompts import (
    ALPACA,
    ALPACA_INPUT,
    PromptError,
    format_instruction,
    llm_adapters_to_mc,
    load_llm_adapters,
    mc_requests,
    read_instruction_file,
)
from fedkron.models.causal_lm import prepare_tokenizer

ROWS = [
    {"context": "What is the capital of France?", "choices": ["Paris", "London café"], "label": 0},
    {"context": "Name a colour", "choices": ["blue", "red", "green"], "label": 2},
]


@pytest.fixture
def tok():
    return prepare_tokenizer(bpe_tokenizer())


def test_lm_eval_templates():
    piqa = mc_requests({"context": "Open a jar", "choices": ["twist", "smash"], "label": 0}, "piqa")
    assert piqa == (["Question: Open a jar\nAnswer:"] * 2, [" twist", " smash"], ["twist", "smash"])
    hella = mc_requests({"context": "Cooking: He cuts", "choices": ["the onion.", "a car."], "label": 0}, "hellaswag")
    assert hella[0] == ["Cooking: He cuts"] * 2 and hella[1] == [" the onion.", " a car."]
    pair = {"text": "is the sky blue", "text_pair": "The sky is blue.", "label": 1}
    prompt = "The sky is blue.\nQuestion: is the sky blue?\nAnswer:"
    assert mc_requests(pair, "boolq") == ([prompt] * 2, [" no", " yes"], ["no", "yes"])
    no_passage = mc_requests({"context": "is it true?", "choices": ["no", "yes"], "label": 1}, "boolq")
    assert no_passage[0][0] == "Question: is it true?\nAnswer:"  # one '?' even when the question has one
    wino = {"sentence": "Anna beat Bo so _ smiled.", "options": ["Anna", "Bo"], "label": 0}
    assert mc_requests(wino, "winogrande") == (
        ["Anna beat Bo so Anna", "Anna beat Bo so Bo"],
        [" smiled."] * 2,
        ["Anna beat Bo so Anna", "Anna beat Bo so Bo"],
    )
    with pytest.raises(PromptError, match="'sentence'.*'options'"):
        mc_requests({"context": "Anna beat Bo so", "choices": ["Anna smiled.", "Bo smiled."], "label": 0}, "winogrande")
    with pytest.raises(PromptError, match="no multiple-choice prompt for task 'mnli'"):
        mc_requests(ROWS[0], "mnli")


def test_pairs_split_like_lm_eval(tok):
    (ctx, cont), (ctx2, cont2) = encode_pairs(tok, ["Question: x\nAnswer: ", ""], ["Paris", " Paris"])
    whole = tok("Question: x\nAnswer: Paris", add_special_tokens=False)["input_ids"]
    assert ctx + cont == whole  # the trailing space moved into the continuation
    assert tok.decode(cont) == " Paris"
    assert ctx2 == [tok.eos_token_id] and tok.decode(cont2) == " Paris"  # empty context: BOS, else EOS


def test_mc_encoding_masks_exactly_the_continuations(tok):
    enc = encode_mc_for_lm(ROWS, tok, 64, task="arc-easy")
    assert enc["row_index"].tolist() == [0, 0, 1, 1, 1] and enc["choice_index"].tolist() == [0, 1, 0, 1, 2]
    assert enc["gold"].tolist() == [0, 2]
    assert enc["choice_chars"].tolist() == [5, 11, 4, 3, 5] and enc["choice_bytes"].tolist() == [5, 12, 4, 3, 5]
    for i, choice in enumerate(["Paris", "London café", "blue", "red", "green"]):
        ids, mask = enc["input_ids"][i], enc["continuation_mask"][i]
        assert tok.decode(ids[mask]) == " " + choice
        n = int(enc["attention_mask"][i].sum())
        assert mask.nonzero().max() == n - 1 and not mask[n:].any()  # continuation ends the sequence
        assert tok.decode(ids[:n][~mask[:n]]) == "Question: " + ROWS[i // 2 if i < 2 else 1]["context"] + "\nAnswer:"


def test_training_labels_are_minus_100_on_prompt_and_padding(tok):
    enc = encode_mc_for_training(ROWS, tok, 64, task="arc-easy")
    for i, gold in enumerate(["Paris", "green"]):
        labels, ids, att = enc["labels"][i], enc["input_ids"][i], enc["attention_mask"][i]
        kept = labels != -100
        assert tok.decode(labels[kept]) == " " + gold
        assert torch.equal(labels[kept], ids[kept])
        prompt = tok("Question: " + ROWS[i]["context"] + "\nAnswer:", add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt)].tolist() == prompt and (labels[: len(prompt)] == -100).all()
        assert (labels[att == 0] == -100).all() and kept.sum() == att.sum() - len(prompt)


def test_too_long_sequences_lose_the_left_of_the_context(tok):
    row = {"context": "The cat sat on the mat. " * 20, "choices": ["blue", "red"], "label": 0}
    enc = encode_mc_for_lm([row], tok, 16)
    assert enc["input_ids"].shape[1] == 16 and tok.decode(enc["input_ids"][0][enc["continuation_mask"][0]]) == " blue"
    full = encode_mc_for_lm([row], tok, 512)
    n = int(full["attention_mask"][0].sum())
    assert enc["input_ids"][0].tolist() == full["input_ids"][0][n - 16 : n].tolist()
    long_choice = {"context": "Q", "choices": ["the cat sat on the mat " * 5, "x"], "label": 0}
    whole = encode_mc_for_lm([long_choice], tok, 8)  # scoring never cuts a choice: the window widens
    longest = len(tok(" " + long_choice["choices"][0], add_special_tokens=False)["input_ids"])
    assert longest > 8 and whole["input_ids"].shape[1] == longest + 1
    assert tok.decode(whole["input_ids"][0][whole["continuation_mask"][0]]) == " " + long_choice["choices"][0]
    cut = encode_mc_for_training([long_choice], tok, 8)  # training keeps one prompt token, cuts the answer's end
    assert (cut["labels"][0, 0] == -100) and (cut["labels"][0, 1:] != -100).all() and cut["input_ids"].shape[1] == 8


def test_alpaca_formatting_and_response_only_loss(tok):
    with_input = {"instruction": "Name a colour.", "input": "sky", "output": "blue"}
    prompt, response = format_instruction(with_input, tok)
    assert prompt == ALPACA_INPUT.format(instruction="Name a colour.", input="sky") and response == "blue" + EOS
    assert format_instruction({"instruction": "Say hi", "output": "hi"}, tok)[0] == ALPACA.format(instruction="Say hi")
    enc = encode_instructions([with_input, {"instruction": "Say hi", "output": "hi"}], tok, 256)
    for i, text in enumerate(["blue", "hi"]):
        kept = enc["labels"][i] != -100
        assert tok.decode(enc["labels"][i][kept]) == text + EOS
        assert tok.decode(enc["input_ids"][i][: int(enc["attention_mask"][i].sum())]).endswith(
            "### Response:\n" + text + EOS
        )


def test_chat_template_formatting():
    tok = prepare_tokenizer(bpe_tokenizer(chat=True))
    prompt, response = format_instruction({"instruction": "Name a colour.", "input": "sky", "output": "blue"}, tok)
    assert prompt == "<|user|>\nName a colour.\n\nsky" + EOS + "\n<|assistant|>\n" and response == "blue" + EOS + "\n"
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "yes"},
        ]
    }
    enc = encode_instructions([chat], tok, 128)
    assert tok.decode(enc["labels"][0][enc["labels"][0] != -100]) == "yes" + EOS + "\n"
    assert format_instruction(chat, tok, use_chat_template=True)[0].startswith("<|system|>\nBe brief.")
    with pytest.raises(PromptError, match="must end with an assistant turn"):
        format_instruction({"messages": chat["messages"][:2]}, tok)
    with pytest.raises(PromptError, match="only \\[user, assistant\\] message rows"):
        format_instruction(chat, tok, use_chat_template=False)


def test_read_instruction_file_json_and_jsonl(tmp_path):
    rows = [{"instruction": "a", "input": "", "output": "b"}, {"messages": [{"role": "assistant", "content": "c"}]}]
    (tmp_path / "x.json").write_text(json.dumps(rows))
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_instruction_file(tmp_path / "x.json") == rows == read_instruction_file(tmp_path / "x.jsonl")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "a"}))
    with pytest.raises(PromptError, match="bad.jsonl: row 0 needs 'instruction' and 'output' or 'messages'"):
        read_instruction_file(tmp_path / "bad.jsonl")


def _record(instruction, answer):
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def test_llm_adapters_records_parse_into_choices():
    arc = _record(
        "Please choose the correct answer to the question: Which is hot? Answer1: no\n\nAnswer1: ice "
        "Answer2: fire Answer3: snow\n\nAnswer format: answer1/answer2/answer3",
        "answer2",
    )
    assert llm_adapters_to_mc(arc) == {
        "context": "Which is hot? Answer1: no",
        "choices": ["ice", "fire", "snow"],
        "label": 1,
    }
    piqa = _record(
        "Please choose the correct solution to the question: Open a jar\n\nSolution1: twist \n\n"
        "Solution2: smash\n\nAnswer format: solution1/solution2",
        "solution1",
    )
    assert llm_adapters_to_mc(piqa) == {"context": "Open a jar", "choices": ["twist", "smash"], "label": 0}
    boolq = _record(
        "Please answer the following question with true or false, question: is ice cold?\n\nAnswer format: true/false",
        "true",
    )
    assert llm_adapters_to_mc(boolq) == {"context": "is ice cold?", "choices": ["no", "yes"], "label": 1}
    wino = _record(
        "Please choose the correct answer to fill in the blank to complete the given sentence: "
        "Anna beat Bo so _ smiled.\n\nOption1: Anna Option2: Bo Answer format: option1/option2",
        "option2",
    )
    assert llm_adapters_to_mc(wino) == {
        "context": "Anna beat Bo so",
        "choices": ["Anna smiled.", "Bo smiled."],
        "label": 1,
        "sentence": "Anna beat Bo so _ smiled.",
        "options": ["Anna", "Bo"],
    }
    with pytest.raises(PromptError, match="answer 'answer5' is not one of"):
        llm_adapters_to_mc(_record(arc["instruction"], "answer5"))


def test_llm_adapters_files_match_the_raw_data(shared_data):
    folder = shared_data / "llm_adapters_commonsense"
    wino = load_llm_adapters("winogrande", "test", folder)
    raw = [json.loads(line) for line in (shared_data / "winogrande" / "dev.jsonl").open()]
    labels = (shared_data / "winogrande" / "dev-labels.lst").read_text().split()
    assert [(r["sentence"], r["options"], r["label"]) for r in wino] == [
        (r["sentence"], [r["option1"], r["option2"]], int(label) - 1) for r, label in zip(raw, labels, strict=True)
    ]
    arc = load_llm_adapters("arc-challenge", "train", folder)
    assert len(arc) == 1119 and sorted({len(r["choices"]) for r in arc}) == [3, 4, 5]
    instr = load_llm_adapters("boolq", "train", folder, kind="instruction")
    assert len(instr) == 9427 and instr[0]["output"].startswith("the correct answer is ")
