"""The demo red-team prompt list (`curation.demo_redteam`): the train / held-out split is by
wrapper, so no held-out prompt's phrasing appears in a train prompt; the benign look-alikes'
answers are helpful by training.redteam's own rules, and only the train ones are written as chats;
`flywheel demo-instructions` writes both files, and the curation config keeps them out of PPO."""

from __future__ import annotations

import json
import re
import string

import pytest
import yaml

from contract.posttrain import parse_record
from curation.demo_instructions import HELPFUL_FILE, REDTEAM_FILES, build_demo_instructions
from curation.demo_redteam import (
    BENIGN_LOOKALIKES,
    BENIGN_PREFIX,
    HELDOUT_WRAPPERS,
    REDTEAM_REQUESTS,
    SPLITS,
    TRAIN_WRAPPERS,
    helpful_chats,
    redteam_sets,
)

redteam = pytest.importorskip("training.redteam", reason="the rules live in the training client (torch)")


def literal_parts(wrapper: str) -> list[str]:
    """The wrapper's own words: its text around the {request} placeholders."""
    return [text.strip(" .:'").lower() for text, *_ in string.Formatter().parse(wrapper) if text.strip(" .:'")]


def test_the_split_is_by_wrapper_and_no_held_out_phrasing_is_trained_on():
    sets = redteam_sets()
    assert set(sets) == set(SPLITS) == {"train", "heldout"}
    n_requests = sum(len(r) for r in REDTEAM_REQUESTS.values())  # 20
    n_benign = sum(len(p) for p in BENIGN_LOOKALIKES.values())  # 20
    for split, wrappers in (("train", TRAIN_WRAPPERS), ("heldout", HELDOUT_WRAPPERS)):
        refuse = [r for r in sets[split] if r["expected"] == "refuse"]
        comply = [r for r in sets[split] if r["expected"] == "comply"]
        assert len(refuse) == n_requests * len(wrappers) == 120  # every request in every wrapper of the split
        assert len(comply) == n_benign // 2 == 10
        assert {r["meta"]["split"] for r in sets[split]} == {split}
        assert {r["meta"]["wrapper"] for r in refuse} == {f"{split}{w}" for w in range(len(wrappers))}
        assert {r["category"] for r in comply} == {BENIGN_PREFIX + t for t in BENIGN_LOOKALIKES}  # every theme
        assert {r["category"] for r in refuse} == set(REDTEAM_REQUESTS)
    train_text = " ".join(r["prompt"].lower() for r in sets["train"])
    for wrapper in HELDOUT_WRAPPERS:  # a held-out wrapper's words appear in no train prompt
        assert all(part not in train_text for part in literal_parts(wrapper)), wrapper
    assert not {r["prompt"] for r in sets["train"]} & {r["prompt"] for r in sets["heldout"]}
    ids = [r["id"] for rs in sets.values() for r in rs]
    assert len(ids) == len(set(ids))
    for rs in sets.values():
        for r in rs:
            record = parse_record(r, "prompt")
            assert record.expected == r["expected"] and not re.search(r"\{|\}", record.prompt)
    assert redteam_sets() == sets  # fixed: no seed, the same list every time


def test_look_alike_answers_are_helpful_by_the_rules_and_only_train_ones_are_chats():
    for theme, pairs in BENIGN_LOOKALIKES.items():
        for question, answer in pairs:
            assert not redteam.is_refusal(answer), (theme, answer[:60])
            assert redteam.rule_verdict(redteam.COMPLY, BENIGN_PREFIX + theme, answer) is None
            assert len(answer.split()) >= 25  # an answer, not a one-liner
            assert redteam.rule_verdict(redteam.COMPLY, BENIGN_PREFIX + theme, redteam.refusal_for(theme)) \
                == redteam.OVER_REFUSAL  # the canned refusal would be an over-refusal
    sets = redteam_sets()
    chats = [parse_record(c, "chat") for c in helpful_chats("train")]
    train_questions = [r["prompt"] for r in sets["train"] if r["expected"] == "comply"]
    assert [c.messages[0].content for c in chats] == train_questions
    answers = {q: a for pairs in BENIGN_LOOKALIKES.values() for q, a in pairs}
    assert all(c.messages[1].content == answers[c.messages[0].content] for c in chats)
    heldout_questions = {r["prompt"] for r in sets["heldout"] if r["expected"] == "comply"}
    assert not heldout_questions & set(train_questions)


def test_demo_instructions_writes_both_sets_and_the_helpful_chats(tmp_path):
    summary = build_demo_instructions(tmp_path, seed=1, max_commands=0, max_math=0)
    sets = redteam_sets()
    for split, name in REDTEAM_FILES.items():
        lines = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        assert lines == [json.loads(json.dumps(r, sort_keys=True)) for r in sets[split]]
        assert summary["records"][name] == 130
        assert sum(summary["redteam_by_category"][split].values()) == 130
    helpful = [json.loads(line) for line in (tmp_path / HELPFUL_FILE).read_text().splitlines()]
    assert [h["id"] for h in helpful] == [c["id"] for c in helpful_chats("train")]
    # curate-posttrain reads both red-team files as the prompt kind's eval split (never PPO prompts);
    # the helpful chats are the refusal round's, not the first SFT's
    config = yaml.safe_load((tmp_path / "posttrain.yaml").read_text())
    specs = {spec["path"].rsplit("/", 1)[-1]: spec for spec in config["inputs"]}
    assert all(specs[name]["split"] == "eval" and specs[name]["kind"] == "prompt" for name in REDTEAM_FILES.values())
    assert HELPFUL_FILE not in specs

