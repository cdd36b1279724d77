"""Post-training curation (in one process, no Ray) and the demo instruction set.

Hand-made records check each step; one run with every step checks accounting, rejects, the
manifest written last and read back; the demo set is built twice (deterministic, valid) and
curated through the CLI, where the planted contamination and PII must be caught.
"""

from __future__ import annotations

import gzip
import json
import os

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from contract.posttrain import PosttrainRun, iter_records, parse_record, read_posttrain_manifest
from curation.config import ConfigError
from curation.demo_instructions import build_demo_instructions, man_summary
from curation.io.files import InputError
from curation.posttrain import decontaminate as decon
from curation.posttrain.config import DecontaminationParams, ExactParams, NearParams, parse_posttrain_config
from curation.posttrain.exact import exact_dedup
from curation.posttrain.near import near_dedup, operator_words
from curation.posttrain.rows import Row, Verdict, read_rows
from curation.posttrain.run import NothingKept, run_posttrain
from flywheel.cli import app
from tests.helpers import write_jsonl

# 30 distinct words: a 13-gram of it is unmistakable.
LONG = ("the reward model reads a prompt with two answers and learns which one people preferred by "
        "comparing scores that a small head puts on the final token of every sequence in the batch")
# 17 words of a "benchmark": 5 distinct 13-grams.
BENCH = "a held out question asks which planet in the solar system has the longest day of all"


def chat(user, assistant, **kw):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **kw}


def rows_of(records, split="train"):
    out = []
    for i, r in enumerate(records):
        rec = parse_record(r)
        out.append(Verdict(Row(rec.id or f"r{i}", rec.kind, split if isinstance(split, str) else split[i], "t", rec)))
    return out


def reasons(verdicts):
    return {v.row.id: v.reason for v in verdicts}


# -- the steps, one at a time --------------------------------------------------------------------

def test_read_keeps_or_rejects_every_line_with_a_reason(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [chat("a", "b", id="x"), "{broken", {"messages": []},
                                               chat("c", "d", id="x"), {"prompt": "p"}])
    cfg = parse_posttrain_config({"inputs": [str(path)], "output": str(tmp_path / "o")})
    got = [(v.row.id, v.row.kind, v.reason) for v in read_rows(cfg.inputs)]
    assert got == [("x", "chat", ""), (f"{path}:2", "", "malformed"), (f"{path}:3", "", "invalid_record"),
                   ("x", "chat", "duplicate_id"), (f"{path}:5", "prompt", "")]
    only_chat = parse_posttrain_config({"inputs": [{"path": str(path), "kind": "chat"}], "output": "o"})
    last = read_rows(only_chat.inputs)[-1]
    assert last.reason == "invalid_record" and "a prompt record where chat records" in last.detail["error"]


def test_exact_dedup_on_conversation_text_keeps_the_eval_copy():
    records = [chat("What is 2+2?", "It is 4.", id="b"), chat("what is 2+2?", "It  is 4.", id="a"),
               chat("What is 2+2?", "It is four.", id="c"),
               {"prompt": "What is 2+2?", "chosen": "It is 4.", "rejected": "5", "id": "p"}]
    out = exact_dedup(rows_of(records, ["eval", "train", "train", "train"]), ExactParams())
    # case and whitespace do not count; the eval record keeps over the smaller id; kinds never meet
    assert reasons(out) == {"b": "", "a": "exact_duplicate", "c": "", "p": ""}
    assert out[1].detail["kept_id"] == "b" and out[1].detail["group_size"] == 2


def test_near_dedup_on_conversation_text():
    records = [chat("Tell me about reward models.", LONG, id="a"),
               chat("Tell me about reward models!", LONG + " too", id="b"),
               chat("Tell me about policies.", " ".join(reversed(LONG.split())), id="c")]
    out = near_dedup(rows_of(records), NearParams())
    assert reasons(out) == {"a": "", "b": "near_duplicate", "c": ""}
    assert out[1].detail["kept"] == "a" and out[1].detail["similarity"] >= 0.8


def test_near_dedup_keeps_signs_apart_and_still_finds_a_near_copy():
    assert operator_words("x**2 - 4 ≤ y") == "x op2a  op2a 2  op2d  4  op2264  y"
    derivative = ("What is the derivative of 3*x**2*sin(x) with respect to x?",
                  "d/dx [3*x**2*sin(x)] = 3*x**2*cos(x) + 6*x*sin(x), by the product rule applied to x**2 and sin(x).")
    records = [{"prompt": "Factor x**2 + 3*x - 4.", "id": "plus"}, {"prompt": "Factor x**2 - 3*x - 4.", "id": "minus"},
               chat("Show that sin(x)**2 + cos(x)**2 = 1.", "It is the Pythagorean identity on the unit circle.",
                    id="identity"),
               chat("Show that sin(x)**2 - cos(x)**2 = 1.", "It is the Pythagorean identity on the unit circle.",
                    id="flipped"),
               chat(*derivative, id="d"), chat(derivative[0], derivative[1] + " Done", id="d-copy")]
    out = near_dedup(rows_of(records), NearParams())
    assert reasons(out) == {"plus": "", "minus": "", "identity": "", "flipped": "", "d": "", "d-copy": "near_duplicate"}
    assert out[5].detail["kept"] == "d"
    # Words only (the pretraining stage's shingles): a sign is no difference at all (keeper: the smaller id).
    words_only = near_dedup(rows_of(records), NearParams(operators=False))
    assert reasons(words_only) == {"plus": "near_duplicate", "minus": "", "identity": "near_duplicate", "flipped": "",
                                   "d": "", "d-copy": "near_duplicate"}
    assert words_only[0].detail == {"cluster": "minus", "kept": "minus", "similarity": 1.0, "cluster_size": 2}


def test_decontamination_drops_a_shared_13_gram_and_keeps_12(tmp_path):
    words = LONG.split()
    eval_set = write_jsonl(tmp_path / "eval.jsonl", [{"text": " ".join(words[:20])}, chat("unrelated", "words here")])
    p = DecontaminationParams(eval_sets=[str(eval_set)])
    index = decon.build_index(p)
    assert index.sets[0].texts == 3 and index.sets[0].ngrams == 8 + 2  # 20 words: 8 13-grams; 2 short texts
    thirteen = "Here is something: " + " ".join(words[5:18]) + " and more of mine."
    twelve = "Here is something: " + " ".join(words[5:17]) + " and more of mine."
    records = [chat("q1", thirteen, id="hit"), chat("q2", twelve, id="miss"),
               chat("q3", "Words, here!", id="short-same"), chat("q4", "more words here", id="short-other")]
    out = decon.decontaminate(rows_of(records), index, p)
    # an eval text under 13 words matches only a field of exactly its words
    assert reasons(out) == {"hit": "contaminated", "miss": "", "short-same": "contaminated", "short-other": ""}
    assert out[0].detail == {"eval_set": str(eval_set), "ngram": " ".join(words[5:18]), "matches": 1,
                             "field": "messages[1].content"}
    held_out = decon.decontaminate(rows_of(records[:1], "eval"), index, p)
    assert held_out[0].reason == ""  # the eval split is not checked against itself
    strict = DecontaminationParams(eval_sets=[str(eval_set)], min_matches=2)
    assert decon.decontaminate(rows_of(records[:1]), index, strict)[0].reason == ""


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="near_dedup.threshold"):
        parse_posttrain_config({"inputs": ["x"], "output": "o", "near_dedup": {"threshold": 2}})
    with pytest.raises(ConfigError, match="bands"):
        parse_posttrain_config({"inputs": ["x"], "output": "o", "near_dedup": {"bands": 4}})
    with pytest.raises(ConfigError, match="inputs.0.kind"):
        parse_posttrain_config({"inputs": [{"path": "x", "kind": "text"}], "output": "o"})


# -- one run with every step ---------------------------------------------------------------------

PII_CHAT = {"id": "pii", "messages": [
    {"role": "system", "content": "You answer for the help desk of john.doe@example.com."},
    {"role": "user", "content": "My card 4111 1111 1111 1111 was charged twice."},
    {"role": "assistant", "content": "Please call us on +1 415 555 2671 or write to help@example.org."}]}
PII_PREF = {"id": "pii-pref", "prompt": "Mail alice@example.com?", "chosen": "Yes, to alice@example.com.",
            "rejected": "No, write to bob@example.net instead."}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("posttrain")
    write_jsonl(root / "in" / "chat.jsonl", [
        chat("What is 2+2?", "It is 4.", id="c1"), chat("what is 2+2?", "It is 4.", id="c1-copy"),
        chat("Tell me about reward models.", LONG, id="c2"),
        chat("Tell me about reward models!", LONG + " too", id="c2-near"),
        chat("Quote the benchmark.", " ".join(BENCH.split()[:14]), id="leak"),
        PII_CHAT, "{not json", {"messages": [{"role": "user", "content": "no answer"}]}])
    write_jsonl(root / "in" / "eval.jsonl", [chat("Held out?", "Yes, held out.", id="e1")])
    write_jsonl(root / "in" / "prefs.jsonl", [PII_PREF, {"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": "p2"}])
    write_jsonl(root / "bench.jsonl", [{"text": BENCH}])
    cfg = parse_posttrain_config({
        "inputs": [str(root / "in" / "chat.jsonl"), {"path": str(root / "in" / "eval.jsonl"), "split": "eval"},
                   {"path": str(root / "in" / "prefs.jsonl"), "kind": "preference"}],
        "output": str(root / "out"), "decontamination": {"eval_sets": [str(root / "bench.jsonl")]},
        "pii": {"entities": ["EMAIL", "PHONE", "CREDIT_CARD"]}})
    return root, cfg, run_posttrain(cfg)


def test_run_accounts_for_every_record(curated):
    root, _, result = curated
    stats = json.loads((root / "out" / "stats.json").read_text())
    assert [s["name"] for s in stats["stages"]] == ["read", "exact_dedup", "near_dedup", "decontaminate", "pii"]
    dropped = {s["name"]: s["dropped"] for s in stats["stages"]}
    assert dropped == {"read": {"invalid_record": 1, "malformed": 1}, "exact_dedup": {"exact_duplicate": 1},
                       "near_dedup": {"near_duplicate": 1}, "decontaminate": {"contaminated": 1}, "pii": {}}
    for s in stats["stages"]:
        assert s["docs_in"] == s["docs_out"] + sum(s["dropped"].values())
    rejects = pq.read_table(root / "out" / "rejects").to_pylist()
    why = {r["id"]: (r["stage"], r["reason"]) for r in rejects}
    assert why == {f"{root}/in/chat.jsonl:7": ("read", "malformed"), f"{root}/in/chat.jsonl:8": ("read", "invalid_record"),
                   "c1-copy": ("exact_dedup", "exact_duplicate"), "c2-near": ("near_dedup", "near_duplicate"),
                   "leak": ("decontaminate", "contaminated")}
    leak = next(r for r in rejects if r["id"] == "leak")
    assert json.loads(leak["text"])["id"] == "leak"  # the whole record is kept in rejects/
    kept = {r.id for r in iter_records(result.manifest)}
    assert kept == {"c1", "c2", "pii", "e1", "pii-pref", "p2"}
    assert len(kept) + len(rejects) == stats["stages"][0]["docs_in"] == 11


def test_pii_is_redacted_in_every_message_and_field(curated):
    _, _, result = curated
    records = {r.id: r for r in iter_records(result.manifest)}
    contents = [m.content for m in records["pii"].messages]
    assert contents == ["You answer for the help desk of <EMAIL>.", "My card <CREDIT_CARD> was charged twice.",
                        "Please call us on <PHONE> or write to <EMAIL>."]
    pref = records["pii-pref"]
    assert (pref.prompt, pref.chosen, pref.rejected) == ("Mail <EMAIL>?", "Yes, to <EMAIL>.",
                                                         "No, write to <EMAIL> instead.")
    pii = result.stats.stages[-1]
    assert pii.extra["entities"] == {"CREDIT_CARD": 1, "EMAIL": 5, "PHONE": 1} and pii.extra["docs_with_pii"] == 2


def test_manifest_is_written_last_and_reads_back(curated):
    root, cfg, result = curated
    out = root / "out"
    manifest_ns = (out / PosttrainRun.MANIFEST).stat().st_mtime_ns
    others = [p for p in out.rglob("*") if p.is_file() and p.name != PosttrainRun.MANIFEST]
    assert others and all(p.stat().st_mtime_ns <= manifest_ns for p in others)
    m = read_posttrain_manifest(out)
    assert m.model_dump() == result.manifest.model_dump()
    assert {(f.kind, f.split): f.records for f in m.files} == {("chat", "train"): 3, ("chat", "eval"): 1,
                                                               ("preference", "train"): 2}
    assert m.decontamination.dropped == 1 and m.decontamination.eval_sets[0].ngrams == 5
    assert m.provenance.config_sha256 == cfg.fingerprint()
    assert [s["name"] for s in m.provenance.stages][-1] == "pii"


def test_a_run_that_keeps_nothing_publishes_no_manifest(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", ["{bad", {"prompt": ""}])
    cfg = parse_posttrain_config({"inputs": [str(tmp_path / "in.jsonl")], "output": str(tmp_path / "out"), "pii": None})
    with pytest.raises(NothingKept, match="no record of 2"):
        run_posttrain(cfg)
    assert (tmp_path / "out" / "stats.json").exists() and not (tmp_path / "out" / PosttrainRun.MANIFEST).exists()


def test_an_unreadable_eval_set_fails_before_any_work(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [chat("a", "b")])
    write_jsonl(tmp_path / "bad-eval.jsonl", [{"question": "no text field"}])
    for eval_set, message in ((tmp_path / "missing.jsonl", "cannot read it"), (tmp_path / "bad-eval.jsonl", ":1: neither")):
        cfg = parse_posttrain_config({"inputs": [str(tmp_path / "in.jsonl")], "output": str(tmp_path / "out"),
                                      "decontamination": {"eval_sets": [str(eval_set)]}, "pii": None})
        with pytest.raises(InputError, match=message):
            run_posttrain(cfg, overwrite=True)
        assert not (tmp_path / "out" / "stats.json").exists()


# -- the demo set ----------------------------------------------------------------------------------

SMALL = {"max_commands": 15, "max_math": 10}


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".jsonl"}


def test_demo_instructions_is_deterministic_and_valid(tmp_path):
    a = build_demo_instructions(tmp_path / "a", seed=3, **SMALL)
    build_demo_instructions(tmp_path / "b", seed=3, **SMALL)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(build_demo_instructions(tmp_path / "c", seed=4, **SMALL) and tmp_path / "c")
    kinds = {"chat-train.jsonl": "chat", "chat-eval.jsonl": "chat", "preference-train.jsonl": "preference",
             "preference-eval.jsonl": "preference", "prompts.jsonl": "prompt", "redteam-train.jsonl": "prompt",
             "redteam-heldout.jsonl": "prompt", "redteam-helpful.jsonl": "chat"}
    ids = {}
    for name, kind in kinds.items():
        lines = (tmp_path / "a" / name).read_text().splitlines()
        assert len(lines) == a["records"][name] > 0
        ids[name] = {parse_record(json.loads(line), kind).id for line in lines}
    assert not ids["chat-train.jsonl"] & ids["chat-eval.jsonl"]
    assert a["items_by_source"]["python"] > 100
    redteam = [json.loads(line) for line in (tmp_path / "a" / "redteam-heldout.jsonl").read_text().splitlines()]
    assert {r["expected"] for r in redteam if not r["category"].startswith("benign_")} == {"refuse"}
    assert {r["category"] for r in redteam} >= {"malware", "personal_data", "dangerous_instructions"}
    prefs = [json.loads(line) for line in (tmp_path / "a" / "preference-train.jsonl").read_text().splitlines()]
    assert all(p["chosen"] != p["rejected"] for p in prefs)
    assert {p["meta"]["rejected_by"] for p in prefs} == {"other_answer", "truncated", "shuffled"}


def test_man_summary_parses_a_name_section(tmp_path):
    page = tmp_path / "demo.1.gz"
    page.write_bytes(gzip.compress(b'.TH DEMO 1\n.SH "NAME"\ndemo \\- show the user\\*(Aqs \\fBfiles\\fR\n.SH SYNOPSIS\n'))
    assert man_summary(page) == ("demo", "show the user's files")
    page.write_bytes(gzip.compress(b".SH NAME\nhostname \\- show the host name\ndomainname \\- show the domain\n"))
    assert man_summary(page) == ("hostname", "show the host name")  # one page, several commands: the first
    page.write_bytes(gzip.compress(b".TH X 1\n.SH SYNOPSIS\nx\n"))
    assert man_summary(page) is None


def test_demo_set_curates_through_the_cli(tmp_path):
    runner = CliRunner()
    made = runner.invoke(app, ["demo-instructions", str(tmp_path / "demo"), "--max-commands", "15", "--max-math", "10"])
    assert made.exit_code == 0, made.output
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    done = runner.invoke(app, ["curate-posttrain", str(tmp_path / "demo" / "posttrain.yaml")])
    assert done.exit_code == 0, done.output
    out = tmp_path / "demo" / "curated"
    rejects = pq.read_table(out / "rejects").to_pylist()
    contaminated = {r["id"] for r in rejects if r["reason"] == "contaminated"}
    assert set(summary["planted"]["contaminated_chat_ids"]) <= contaminated
    chats = {r.id: r for r in iter_records(read_posttrain_manifest(out), kind="chat")}
    for chat_id in summary["planted"]["pii_chat_ids"]:
        answer = chats[chat_id].messages[-1].content
        assert "@" not in answer and "<EMAIL>" in answer and "<PHONE>" in answer
    again = runner.invoke(app, ["curate-posttrain", str(tmp_path / "demo" / "posttrain.yaml")])
    assert again.exit_code == 2 and "not empty" in again.output
    assert os.path.exists(out / PosttrainRun.MANIFEST)
