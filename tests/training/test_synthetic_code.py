"""Synthetic code: prompts from documented functions, each validation step's verdict, dedup, counts."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from training.sandbox import SandboxLimits, unavailable_reason
from training.synthetic_code import (
    CORPUS_FILE,
    DOMAIN,
    REASONS,
    REJECTS_FILE,
    SUMMARY_FILE,
    Candidate,
    CodeIndex,
    CodePrompt,
    MinHasher,
    SynthesisConfig,
    candidate_code,
    collect_prompts,
    doctest_text,
    normalised,
    prompts_from_source,
    read_candidates,
    read_prompts,
    shingle_hashes,
    static_check,
    synthesize,
    write_prompts,
)

needs_sandbox = pytest.mark.skipif(unavailable_reason() is not None, reason=f"no sandbox: {unavailable_reason()}")

MODULE = '''\
import math
from collections import Counter


def add(a, b):
    """Sum of a and b.

    >>> add(2, 3)
    5
    >>> add(
    ...     -1, 1)
    0
    """
    return a + b


def undocumented(x):
    return x


def prose_only(x):
    """No examples here."""
    return x


@staticmethod
def decorated(x):
    """>>> decorated(1)
    1
    """
    return x
'''

ADD_PROMPT = '''\
import math
from collections import Counter


def add(a, b):
    """Sum of a and b.

    >>> add(2, 3)
    5
    >>> add(
    ...     -1, 1)
    0
    """
'''

WORD_COUNTS = '''\
def word_counts(text, lower=True):
    """Words of text and how often each occurs, most frequent first.

    >>> word_counts("The cat saw the dog. The end!")
    {'the': 3, 'cat': 1, 'dog': 1, 'end': 1, 'saw': 1}
    """
    counts = {}
    for raw in text.split():
        word = raw.strip(".,;:!?()[]")
        if lower:
            word = word.lower()
        if not word:
            continue
        counts[word] = counts.get(word, 0) + 1
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return dict(ordered)
'''


def test_a_prompt_is_the_signature_and_docstring_with_its_doctests():
    prompts = prompts_from_source(MODULE, "demo")
    assert [p.id for p in prompts] == ["demo:add"]  # no docstring, no doctests, decorated: skipped
    (p,) = prompts
    assert p.prompt == ADD_PROMPT and p.function_name == "add"
    assert p.tests == [">>> add(2, 3)\n5\n>>> add(\n...     -1, 1)\n0\n"]
    loose = prompts_from_source(MODULE, "demo", require_tests=False)
    assert [q.function_name for q in loose] == ["add", "prose_only"] and loose[1].tests == []
    assert prompts_from_source("def broken(:\n", "x") == []
    assert doctest_text("no examples") == ""


def test_prompts_already_in_the_reference_are_not_gaps(tmp_path):
    source = tmp_path / "demo.py"
    source.write_text(MODULE + "\n\n" + WORD_COUNTS)
    prompts, covered = collect_prompts(sources=[source])
    assert [p.id for p in prompts] == ["demo:add", "demo:word_counts"] and covered == 0
    reference = tmp_path / "code.jsonl"
    reference.write_text(json.dumps({"id": "ref", "text": "import os\n\n" + WORD_COUNTS}) + "\n")
    prompts, covered = collect_prompts(sources=[source], reference=[reference])
    assert [p.id for p in prompts] == ["demo:add"] and covered == 1
    write_prompts(prompts, tmp_path / "p.jsonl")
    assert read_prompts(tmp_path / "p.jsonl") == prompts


def test_a_completion_ends_where_the_body_returns_to_column_zero(tmp_path):
    completion = "    return a + b\n\n\ndef other():\n    pass\n"
    assert candidate_code(ADD_PROMPT, completion) == ADD_PROMPT + "    return a + b\n"
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt_id": "demo:add", "completion": completion, "generator": "g"}) + "\n"
                    + json.dumps({"prompt_id": "demo:add", "code": "x = 1\n"}) + "\n")
    prompt = CodePrompt(id="demo:add", prompt=ADD_PROMPT, function_name="add")
    assert read_candidates(path, {"demo:add": prompt}) == [
        Candidate("demo:add", ADD_PROMPT + "    return a + b\n", "g"), Candidate("demo:add", "x = 1\n", "unknown")]


def test_static_checks_name_the_first_failure():
    assert static_check("def add(a, b):\n    return a + b\n", "add") == (None, "")
    assert static_check("def add(a, b)\n    return a + b\n", "add")[0] == "syntax_error"
    assert static_check("return 1\ndef add(a, b):\n    pass\n", "add")[0] == "compile_error"
    assert static_check("def plus(a, b):\n    return a + b\n", "add") == ("missing_function", "no top-level def add")


def test_the_exact_key_ignores_formatting_comments_and_docstrings():
    a = "def f(x):\n    '''Doc.'''\n    return x+1\n"
    b = "def f( x ):  # a comment\n    return (x + 1)\n"
    assert normalised(a) == normalised(b)
    assert normalised(a)[0] != normalised("def f(x):\n    return x + 2\n")[0]


def test_minhash_estimates_jaccard():
    """The agreement rate of two signatures estimates the shingle sets' Jaccard similarity: with 512
    permutations its standard error is at most 0.5 / sqrt(512) = 0.022; we allow 4 of them."""
    changed = WORD_COUNTS.replace("        if not word:\n", "        if word == '':\n")
    a, b = (normalised(t)[1] for t in (WORD_COUNTS, changed))
    sa, sb = (set(shingle_hashes(t, 5).tolist()) for t in (a, b))
    jaccard = len(sa & sb) / len(sa | sb)
    hasher = MinHasher(num_perm=512, ngram=5, seed=0)
    estimate = float(np.mean(hasher.signature(a) == hasher.signature(b)))
    assert 0.8 < jaccard < 0.9 and abs(estimate - jaccard) < 0.09
    assert np.array_equal(hasher.signature(a), MinHasher(512, 5, 0).signature(a))  # seeded: deterministic


def test_a_reference_module_is_indexed_whole_and_per_function():
    index = CodeIndex(SynthesisConfig())
    index.add_reference("ref", "import os\n\n" + WORD_COUNTS + "\n\nclass K:\n    pass\n")
    assert index.ids == ["ref", "ref#word_counts", "ref#K"]
    assert index.match(WORD_COUNTS.replace("    counts = {}", "    counts = {}  # fresh")) == (
        "exact_duplicate", {"of": "ref#word_counts"})
    assert index.match("def g():\n    return 42\n") == (None, {})


@needs_sandbox
def test_synthesize_accepts_rejects_with_reasons_and_counts_add_up(tmp_path):
    reference = tmp_path / "code.jsonl"
    reference.write_text(json.dumps({"id": "ref", "text": "import re\n\n" + WORD_COUNTS}) + "\n")
    word_prompt = prompts_from_source(WORD_COUNTS, "words")[0]
    square = CodePrompt(id="sq", prompt="def square(x):\n", function_name="square",
                        tests=["assert square(3) == 9", "assert square(-2) == 4"])
    untested = CodePrompt(id="free", prompt="def free(x):\n", function_name="free")
    prompts = [prompts_from_source(MODULE, "demo")[0], word_prompt, square, untested]
    body = ADD_PROMPT + "    return a + b\n"
    counter_impl = textwrap.dedent('''\
        from collections import Counter
        def word_counts(text, lower=True):
            words = [w.strip(".,;:!?()[]") for w in text.split()]
            found = Counter(w.lower() if lower else w for w in words if w)
            return dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))
        ''')
    candidates = [
        Candidate("demo:add", body, "g"),  # accepted
        Candidate("demo:add", "def add(a, b)\n    return a + b\n", "g"),  # syntax_error
        Candidate("demo:add", "def plus(a, b):\n    return a + b\n", "g"),  # missing_function
        Candidate("demo:add", ADD_PROMPT + "    return a - b\n", "g"),  # tests_failed (a doctest)
        Candidate("demo:add", "import math\nfrom collections import Counter\ndef add(a, b):  # no docstring\n"
                              "    return (a + b)\n", "g"),  # exact duplicate of the first
        Candidate("words:word_counts", WORD_COUNTS.replace("    counts = {}", "    counts = dict()"), "g"),  # near dup
        Candidate("words:word_counts", counter_impl, "g"),  # accepted: same behaviour, other code
        Candidate("sq", "def square(x):\n    return x * x\n", "g"),  # accepted (asserts)
        Candidate("sq", "def square(x):\n    return abs(x) * 3\n", "g"),  # tests_failed (an assert)
        Candidate("sq", "import sys\nsys.exit(0)\ndef square(x):\n    return x * x\n", "g"),  # exits early
        Candidate("sq", "def square(x):\n    while True:\n        pass\n", "g"),  # timeout
        Candidate("free", "def free(x):\n    return x\n", "g"),  # no_tests
        Candidate("free", "def free(x):\n    '''>>> free(2)\n    2\n    '''\n    return x\n", "g2"),  # own doctest
        Candidate("nope", "def nope():\n    pass\n", "g"),  # unknown_prompt
    ]
    config = SynthesisConfig(limits=SandboxLimits(wall_seconds=10, cpu_seconds=1), workers=2)
    summary = synthesize(prompts, candidates, tmp_path / "out", reference_files=[reference], config=config)

    rejects = [json.loads(line) for line in (tmp_path / "out" / REJECTS_FILE).read_text().splitlines()]
    assert [(r["candidate"], r["reason"]) for r in rejects] == [
        (1, "syntax_error"), (2, "missing_function"), (3, "tests_failed"), (4, "exact_duplicate"),
        (5, "near_duplicate"), (8, "tests_failed"), (9, "tests_failed"), (10, "timeout"), (11, "no_tests"),
        (13, "unknown_prompt")]
    by_candidate = {r["candidate"]: r for r in rejects}
    assert "Expected:\n    0\nGot:\n    -2" in by_candidate[3]["detail"].replace("\n    -1, 1)", "")
    assert by_candidate[4]["of"] == "synthetic-code/demo:add/0"  # a duplicate of an earlier acceptance
    assert by_candidate[5]["of"] in ("ref", "ref#word_counts") and by_candidate[5]["jaccard_estimate"] >= 0.7
    assert "AssertionError" in by_candidate[8]["detail"]
    assert by_candidate[9]["detail"] == "the program exited before the tests finished"

    corpus = [json.loads(line) for line in (tmp_path / "out" / CORPUS_FILE).read_text().splitlines()]
    assert [(c["prompt_id"], c["tests_source"]) for c in corpus] == [
        ("demo:add", "prompt"), ("words:word_counts", "prompt"), ("sq", "prompt"), ("free", "candidate_doctests")]
    assert corpus[0] == {"id": "synthetic-code/demo:add/0", "text": body, "domain": DOMAIN, "source": "synthetic-code",
                         "synthetic": True, "generator": "g", "prompt_id": "demo:add", "tests_source": "prompt",
                         "tests": 1}  # fmt: skip

    expected = dict.fromkeys(REASONS, 0) | {"syntax_error": 1, "missing_function": 1, "tests_failed": 3,
                                             "exact_duplicate": 1, "near_duplicate": 1, "timeout": 1, "no_tests": 1,
                                             "unknown_prompt": 1}  # fmt: skip
    assert summary["rejected"] == expected
    assert (summary["candidates"], summary["accepted"], summary["acceptance_rate"]) == (14, 4, round(4 / 14, 4))
    assert summary["candidates"] == summary["accepted"] + sum(summary["rejected"].values())
    assert summary["prompts_with_accepted"] == 4 and summary["generators"] == {"g": 13, "g2": 1}
    assert json.loads((tmp_path / "out" / SUMMARY_FILE).read_text()) == summary


@needs_sandbox
def test_flywheel_synthesize_code_from_a_candidates_file(tmp_path):
    from typer.testing import CliRunner

    from flywheel.cli import app

    source = tmp_path / "demo.py"
    source.write_text(MODULE)
    prompts = tmp_path / "prompts.jsonl"
    made = CliRunner().invoke(app, ["code-prompts", str(prompts), "--source", str(source)])
    assert made.exit_code == 0 and "1 prompts" in made.output, made.output
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text("".join(json.dumps(c) + "\n" for c in [
        {"prompt_id": "demo:add", "completion": "    return a + b\n\nprint('after the body')\n", "generator": "m"},
        {"prompt_id": "demo:add", "completion": "    return a * b\n", "generator": "m"}]))
    result = CliRunner().invoke(app, ["synthesize-code", "--prompts", str(prompts), "--candidates", str(candidates),
                                      "--out", str(tmp_path / "out")], terminal_width=200)  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert (summary["accepted"], summary["rejected"]["tests_failed"]) == (1, 1)
    assert "50.0%" in result.output
    both = CliRunner().invoke(app, ["synthesize-code", "--prompts", str(prompts), "--out", str(tmp_path / "o")])
    assert both.exit_code == 2 and "exactly one of" in both.output


@needs_sandbox  # trains a 1-step tiny checkpoint (~7 s) to sample candidates from
def test_flywheel_synthesize_code_samples_candidates_from_a_checkpoint(tmp_path):
    pytest.importorskip("tokenizers")
    from typer.testing import CliRunner

    from contract.manifest import parse_manifest, write_manifest
    from contract.shards import sha256_file
    from contract.tokenizer import SpecialTokens
    from curation.tokenizer import train_bpe
    from flywheel.cli import app
    from training.cli import train_command
    from training.data.synthetic import write_synthetic_dataset

    manifest_path = write_synthetic_dataset(tmp_path / "data", total_tokens=4_000, vocab_size=300, mean_doc_tokens=60,
                                            seed=0)  # fmt: skip
    tokenizer_path = manifest_path.parent / "tokenizer.json"
    train_bpe([[MODULE, WORD_COUNTS]], vocab_size=300, special=SpecialTokens()).save(str(tokenizer_path))
    manifest = parse_manifest(manifest_path.read_bytes())
    info = manifest.tokenizer.model_copy(update={"sha256": sha256_file(tokenizer_path)})
    write_manifest(manifest_path, manifest.model_copy(update={"tokenizer": info}))
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"seq_len": 32, "global_batch_tokens": 128, "micro_batch": 4,
                                  "peak_tflops_per_worker": 0.05, "model": {"attn_dropout": 0.0}}))
    run = tmp_path / "run"
    train_command(config, manifest=str(manifest_path), preset="tiny", steps=1, workers=1, out=run, local=True)
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts_from_source(MODULE, "demo") + prompts_from_source(WORD_COUNTS, "words"), prompts)

    result = CliRunner().invoke(app, ["synthesize-code", "--prompts", str(prompts), "--model", str(run),
                                      "--samples", "2", "--max-new-tokens", "12", "--out", str(tmp_path / "out")],
                                terminal_width=200)  # fmt: skip

    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert summary["candidates"] == 4 and summary["generators"] == {"checkpoint:run@step1": 4}
    # A 1-step model writes noise: it is rejected, with a reason each (a result, not a failure).
    assert summary["accepted"] + sum(summary["rejected"].values()) == 4
    rejects = [json.loads(line) for line in (tmp_path / "out" / REJECTS_FILE).read_text().splitlines()]
    assert len(rejects) == 4 - summary["accepted"] and all(r["reason"] in REASONS for r in rejects)
    assert [r["prompt_id"] for r in rejects[:2]] == ["demo:add"] * 2 and rejects[0]["code"].startswith(ADD_PROMPT)
