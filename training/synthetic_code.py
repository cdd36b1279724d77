"""Synthetic Python functions: prompts from the code domain's gaps, validation, dedup, a corpus.

    prompts, covered = collect_prompts(modules=["statistics"], reference=["code.jsonl"])  # the gaps
    write_prompts(prompts, "prompts.jsonl")                  # {id, prompt, function_name, tests}
    summary = synthesize(prompts, candidates, reference_files=["code.jsonl"], out="synth/")
    summary["acceptance_rate"], summary["rejected"]                    # {reason: count}

A prompt is a function's signature and docstring without its body (the module's imports above
it), and its tests: the docstring's doctest examples, or given asserts. A candidate is a whole
source string from any generator (`candidates_from_model` asks a checkpoint; a completion is cut
where the body ends). Each candidate is checked in order, and the first failure is its reason:

    syntax_error -> compile_error -> missing_function -> no_tests -> tests_failed | timeout |
    memory | crashed (the tests, run in `training.sandbox`) -> exact_duplicate -> near_duplicate

`unknown_prompt` rejects a candidate whose prompt_id names no prompt. Tests are the prompt's
when it has some, else the candidate's own doctests (weaker: the model wrote them; recorded as
`tests_source`). A candidate passes only if the harness prints its per-run nonce after every test
ran, so code that exits early (`sys.exit(0)` at import) does not pass.

Dedup, of passing candidates, against a reference code corpus (JSONL of {"text", "id"?}) and the
candidates accepted before it, in input order:
- exact: sha256 of the AST dump with docstrings removed (formatting, comments and docstrings
  do not count); a reference document counts whole and as each of its top-level functions and
  classes, so a copied function is caught inside a module;
- near: MinHash (Broder 1997) over `NGRAM`-token shingles of the same normalised source
  (`ast.unparse`); estimated Jaccard >= `near_threshold` against any reference unit or earlier
  acceptance. The comparison is brute force, numpy over every stored signature (O(units x
  num_perm) per candidate: 100k units is ~10 ms); LSH banding would be the next step past that.
  datasketch is a curation library the training client must not import (pyproject's
  contracts), so the hashing is the 15 lines below.

Output folder: corpus.jsonl (domain `synthetic-code`, so a mixture weights it on its own, plus
`synthetic: true`, generator, prompt_id, source), rejects.jsonl (reason and detail of every
rejected candidate) and summary.json (counts that add up: candidates = accepted + rejected).
"""

from __future__ import annotations

import ast
import doctest
import hashlib
import importlib
import inspect
import json
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from contract.atomic import write_json_atomic
from contract.jsonl import numbered_records
from training.sampling_config import SamplingConfig
from training.sandbox import SandboxLimits, SandboxResult, SandboxUnavailable, require_sandbox, run_python

DOMAIN = SOURCE = "synthetic-code"  # the corpus records' domain (mixture weights) and provenance source
CORPUS_FILE, REJECTS_FILE, SUMMARY_FILE = "corpus.jsonl", "rejects.jsonl", "summary.json"
Reason = Literal["unknown_prompt", "syntax_error", "compile_error", "missing_function", "no_tests", "tests_failed",
                 "timeout", "memory", "crashed", "exact_duplicate", "near_duplicate"]
REASONS: tuple[Reason, ...] = get_args(Reason)  # the summary lists every reason, zeros included
# How a sandbox run that did not pass becomes a rejection reason (`refused` stops the whole run).
SANDBOX_REASON: dict[str, Reason] = {"failed": "tests_failed", "timeout": "timeout", "memory": "memory",
                                     "crashed": "crashed"}


class SynthesisConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limits: SandboxLimits = Field(default_factory=SandboxLimits, description="Per candidate's test run.")
    ngram: int = Field(5, ge=1, description="Code tokens per MinHash shingle.")
    num_perm: int = Field(128, ge=16, description="MinHash signature length (Jaccard error ~ 1/sqrt(num_perm)).")
    near_threshold: float = Field(0.7, gt=0, le=1, description="Estimated Jaccard at or above: a near duplicate.")
    seed: int = Field(0, description="Seeds the MinHash permutations.")
    workers: int = Field(1, ge=1, description="Sandboxes run at once (each is one process tree).")


class CodePrompt(BaseModel):
    """One line of a prompt JSONL."""

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: str  # imports, then `def name(...):` and its docstring, no body
    function_name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # it is written into the harness
    tests: list[str] = Field(default_factory=list)  # doctest text (">>> ...") or statements (asserts)


@dataclass(frozen=True)
class Candidate:
    prompt_id: str
    code: str
    generator: str


# -- prompts ---------------------------------------------------------------------------------


def doctest_text(docstring: str) -> str:
    """The doctest examples of a docstring as doctest text (prose dropped), "" when it has none."""
    lines = []
    for example in doctest.DocTestParser().get_examples(docstring):
        source = example.source.rstrip("\n").split("\n")
        want = example.want.rstrip("\n")  # a blank line inside it is written <BLANKLINE>: none is empty
        lines += [">>> " + source[0], *("... " + s for s in source[1:]), *(want.split("\n") if want else [])]
    return "\n".join(lines) + "\n" if lines else ""


def prompts_from_source(source: str, origin: str, *, require_tests: bool = True) -> list[CodePrompt]:
    """A prompt per top-level, undecorated function with a docstring (with doctests, by default)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    imports = [ast.get_source_segment(source, n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    head = "\n".join(s for s in imports if s) + "\n\n\n" if imports else ""
    prompts = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.decorator_list:
            continue
        docstring = ast.get_docstring(node)
        if not docstring:
            continue
        tests = doctest_text(docstring)
        if require_tests and not tests:
            continue
        signature_and_docstring = "".join(lines[node.lineno - 1 : node.body[0].end_lineno])
        prompts.append(CodePrompt(id=f"{origin}:{node.name}", prompt=head + signature_and_docstring,
                                  function_name=node.name, tests=[tests] if tests else []))
    return prompts


def module_source(name: str) -> str:
    """The source of an installed module (TypeError for a built-in one, OSError without a .py)."""
    return inspect.getsource(importlib.import_module(name))


def prompts_from_modules(names: Iterable[str], *, require_tests: bool = True) -> list[CodePrompt]:
    """Prompts from installed modules' source (e.g. the standard library's doctested functions)."""
    return [p for name in names for p in prompts_from_source(module_source(name), name, require_tests=require_tests)]


def function_sources(source: str, origin: str) -> dict[str, str]:
    """{prompt id: the whole function}: the known solution of each prompt `prompts_from_source` makes."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    return {f"{origin}:{n.name}": ast.get_source_segment(source, n) or "" for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def collect_prompts(modules: Iterable[str] = (), sources: Iterable[str | Path] = (), corpora: Iterable[str | Path] = (),
                    reference: Iterable[str | Path] = (), *, require_tests: bool = True,
                    config: SynthesisConfig | None = None) -> tuple[list[CodePrompt], int]:
    """Prompts from installed modules, Python files and code corpus JSONL files, less the ones whose
    original function the reference corpus already holds, exactly or nearly: the corpus's gaps.
    Returns (prompts, how many the reference covered)."""
    documents = [(module_source(name), name) for name in modules]
    documents += [(Path(path).read_text(), Path(path).stem) for path in sources]
    for path in corpora:
        documents += [(str(r.get("text", "")), str(r.get("id", f"{Path(path).name}:{n}"))) for n, r in _records(path)]
    prompts, solutions = [], {}
    for text, origin in documents:
        prompts += prompts_from_source(text, origin, require_tests=require_tests)
        solutions.update(function_sources(text, origin))
    reference = list(reference)
    if not reference:
        return prompts, 0
    index = reference_index(reference, config or SynthesisConfig())
    gaps = [p for p in prompts if index.match(solutions[p.id])[0] is None]
    return gaps, len(prompts) - len(gaps)


def write_prompts(prompts: Iterable[CodePrompt], path: str | Path) -> int:
    rows = [p.model_dump_json() for p in prompts]
    Path(path).write_text("".join(r + "\n" for r in rows))
    return len(rows)


def read_prompts(path: str | Path) -> list[CodePrompt]:
    return [CodePrompt.model_validate(r) for _, r in _records(path)]


def read_candidates(path: str | Path, prompts: dict[str, CodePrompt]) -> list[Candidate]:
    """Candidate JSONL: {"prompt_id", "code" | "completion", "generator"?}. A completion is appended
    to its prompt and cut where the function body ends (`candidate_code`)."""
    out = []
    for number, r in _records(path):
        prompt_id, generator = str(r.get("prompt_id", "")), str(r.get("generator", "unknown"))
        if isinstance(r.get("code"), str):
            code = r["code"]
        elif isinstance(r.get("completion"), str):
            prompt = prompts.get(prompt_id)
            code = candidate_code(prompt.prompt if prompt else "", r["completion"])
        else:
            raise ValueError(f"{path}:{number}: a candidate has a string `code` or `completion`")
        out.append(Candidate(prompt_id, code, generator))
    return out


def candidate_code(prompt: str, completion: str) -> str:
    """prompt + completion, cut at the first line back at column 0: the body has ended there
    (what HumanEval's stop sequences "\\ndef", "\\nclass", "\\nif", "\\nprint" approximate)."""
    end = re.search(r"\n(?=\S)", completion)
    return prompt + (completion[: end.start()] if end else completion).rstrip() + "\n"


def candidates_from_model(checkpoint: str | Path, prompts: list[CodePrompt], samples: int = 1, *,
                          max_new_tokens: int = 128, temperature: float = 0.8, top_p: float = 0.95, seed: int = 0,
                          batch_size: int = 8) -> list[Candidate]:
    """`samples` completions per prompt from a checkpoint (`training.generate.Generator`, CPU)."""
    from training.generate import Generator  # torch: only the --model path loads it

    generator = Generator.from_checkpoint(checkpoint)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    asked = [p for p in prompts for _ in range(samples)]  # one RNG stream: repeats sample differently
    completions = generator.generate([p.prompt for p in asked], sampling, batch_size=batch_size)
    name = f"checkpoint:{Path(checkpoint).name}@step{generator.meta.get('step', '?')}"
    return [Candidate(p.id, candidate_code(p.prompt, c.text), name) for p, c in zip(asked, completions)]


def _records(path: str | Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        for number, record in numbered_records(f, str(path)):
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            yield number, record


# -- static checks and the sandboxed tests ---------------------------------------------------------


def defines_function(tree: ast.Module, name: str) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body)


def static_check(code: str, function_name: str) -> tuple[Reason | None, str]:
    """(reason, detail) of the first static check `code` fails; (None, "") when it passes them."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        return "syntax_error", f"line {e.lineno}: {e.msg}"
    except ValueError as e:  # null bytes
        return "syntax_error", str(e)
    try:
        compile(tree, "candidate.py", "exec")
    except (SyntaxError, ValueError) as e:  # e.g. `return` outside a function, nonlocal at module level
        return "compile_error", str(e)
    if not defines_function(tree, function_name):
        return "missing_function", f"no top-level def {function_name}"
    return None, ""


def own_doctests(code: str, function_name: str) -> str:
    tree = ast.parse(code)
    node = next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                and n.name == function_name)
    return doctest_text(ast.get_docstring(node) or "")


# The program the sandbox runs: the candidate as a module, then each test in its namespace.
# Doctest failures and assertion tracebacks go to stderr (kept in the rejection's detail).
_HARNESS = '''\
import doctest, sys, traceback
ns = {{"__name__": "candidate"}}
exec(compile({code!r}, "candidate.py", "exec"), ns)
if not callable(ns.get({name!r})):
    sys.exit("{name} is not callable after the module ran")
failed = 0
for i, test in enumerate({tests!r}):
    if test.lstrip().startswith(">>>"):
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(doctest.DocTestParser().get_doctest(test, dict(ns), f"test_{{i}}", "tests", 0),
                   out=sys.stderr.write)
        failed += runner.summarize(verbose=False).failed > 0
    else:
        try:
            exec(compile(test, f"<test {{i}}>", "exec"), dict(ns))
        except Exception:
            traceback.print_exc()
            failed += 1
print("{nonce}", len({tests!r}), failed)
sys.exit(1 if failed else 0)
'''


def harness_program(code: str, function_name: str, tests: list[str], nonce: str) -> str:
    return _HARNESS.format(code=code, name=function_name, tests=tests, nonce=nonce)


def run_tests(code: str, function_name: str, tests: list[str],
              limits: SandboxLimits) -> tuple[Reason | None, str, SandboxResult]:
    """(reason, detail, the sandbox's result); reason None: every test passed."""
    nonce = secrets.token_hex(8)
    result = run_python(harness_program(code, function_name, tests, nonce), limits)
    if result.status == "refused":
        raise SandboxUnavailable(result.detail)
    if result.status != "passed":
        detail = result.detail + (f" ({result.limit})" if result.limit else "")
        return SANDBOX_REASON[result.status], f"{detail}: {result.stderr.strip()[-600:]}", result
    if result.stdout.rstrip("\n").split("\n")[-1] != f"{nonce} {len(tests)} 0":
        return "tests_failed", "the program exited before the tests finished", result
    return None, "", result


# -- dedup --------------------------------------------------------------------------------------

_CODE_TOKEN = re.compile(r"[A-Za-z_]\w*|\d[\w.]*|\S")
_DOCSTRING_OWNERS = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_M64 = (1 << 64) - 1


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, _DOCSTRING_OWNERS) and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str):
            node.body = node.body[1:] or [ast.Pass()]
    return tree


def normalised(code: str) -> tuple[str, str]:
    """(exact key, the text MinHash reads): for Python, the AST dump's sha256 and `ast.unparse`,
    both without docstrings; for anything else, whitespace-collapsed text."""
    try:
        tree = _without_docstrings(ast.parse(code))
        return hashlib.sha256(ast.dump(tree).encode()).hexdigest(), ast.unparse(tree)
    except (SyntaxError, ValueError, RecursionError):
        text = " ".join(code.split())
        return hashlib.sha256(text.encode()).hexdigest(), text


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """64-bit hashes (blake2b) of the distinct `ngram`-token shingles of `text` (one shingle of
    all tokens when there are fewer)."""
    tokens = _CODE_TOKEN.findall(text)
    grams = {"\x1f".join(tokens[i : i + ngram]) for i in range(max(1, len(tokens) - ngram + 1))} if tokens else set()
    return np.array([int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little")
                     for g in sorted(grams)], dtype=np.uint64)


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: a bijection on uint64 that avalanches every input bit."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


class MinHasher:
    """Signature[i] = min over shingles of fmix64(shingle ^ seed_i): num_perm independent hash
    functions, so P(two signatures agree at i) = Jaccard(shingle sets) (Broder 1997)."""

    def __init__(self, num_perm: int, ngram: int, seed: int):
        self.ngram = ngram
        self.seeds = np.random.default_rng(seed).integers(0, 2**63, size=(num_perm, 1), dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        hashes = shingle_hashes(text, self.ngram)
        if hashes.size == 0:
            return np.full(self.seeds.shape[0], _M64, dtype=np.uint64)
        with np.errstate(over="ignore"):  # multiplication mod 2^64 is the point
            return fmix64(hashes[None, :] ^ self.seeds).min(axis=1)


class CodeIndex:
    """Exact keys and MinHash signatures of reference units and accepted code, each with its id."""

    def __init__(self, config: SynthesisConfig):
        self.hasher = MinHasher(config.num_perm, config.ngram, config.seed)
        self.threshold = config.near_threshold
        self.exact: dict[str, str] = {}
        self.ids: list[str] = []
        self._rows: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, unit_id: str, code: str) -> None:
        key, text = normalised(code)
        self.exact.setdefault(key, unit_id)
        self.ids.append(unit_id)
        self._rows.append(self.hasher.signature(text))
        self._matrix = None

    def add_reference(self, doc_id: str, text: str) -> None:
        """A reference document whole, and each of its top-level functions and classes."""
        self.add(doc_id, text)
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            return
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.add(f"{doc_id}#{node.name}", ast.get_source_segment(text, node) or "")

    def match(self, code: str) -> tuple[Reason | None, dict[str, Any]]:
        """("exact_duplicate" | "near_duplicate", {of, jaccard_estimate}) or (None, {})."""
        key, text = normalised(code)
        if key in self.exact:
            return "exact_duplicate", {"of": self.exact[key]}
        if not self.ids:
            return None, {}
        if self._matrix is None:
            self._matrix = np.stack(self._rows)
        agree = (self._matrix == self.hasher.signature(text)[None, :]).mean(axis=1)
        best = int(agree.argmax())
        if agree[best] >= self.threshold:
            return "near_duplicate", {"of": self.ids[best], "jaccard_estimate": round(float(agree[best]), 4)}
        return None, {}


def reference_index(files: Iterable[str | Path], config: SynthesisConfig) -> CodeIndex:
    index = CodeIndex(config)
    for path in files:
        for number, record in _records(path):
            if isinstance(record.get("text"), str):
                index.add_reference(str(record.get("id", f"{Path(path).name}:{number}")), record["text"])
    return index


# -- the run ------------------------------------------------------------------------------------


def synthesize(prompts: list[CodePrompt], candidates: list[Candidate], out: str | Path,
               reference_files: Iterable[str | Path] = (), config: SynthesisConfig | None = None) -> dict[str, Any]:
    """Validate, dedup and write the candidates; returns (and writes) the summary."""
    config = config or SynthesisConfig()
    started = time.monotonic()
    require_sandbox()  # never run candidates unsandboxed: stop here instead
    by_id = {p.id: p for p in prompts}
    index = reference_index(reference_files, config)
    reference_units = len(index)

    def tests_of(c: Candidate) -> tuple[Reason | None, str, dict[str, Any]]:
        prompt = by_id.get(c.prompt_id)
        if prompt is None:
            return "unknown_prompt", f"no prompt with id {c.prompt_id!r}", {}
        reason, detail = static_check(c.code, prompt.function_name)
        if reason:
            return reason, detail, {}
        tests, source = (prompt.tests, "prompt") if prompt.tests else ([], "candidate_doctests")
        if not tests and (own := own_doctests(c.code, prompt.function_name)):
            tests = [own]
        if not tests:
            return "no_tests", "neither the prompt nor the candidate has doctests or asserts", {}
        reason, detail, result = run_tests(c.code, prompt.function_name, tests, config.limits)
        return reason, detail, {"tests_source": source, "tests": len(tests), "sandbox_s": round(result.duration_s, 3)}

    with ThreadPoolExecutor(config.workers) as pool:  # sandboxes are processes: threads only wait
        verdicts = list(pool.map(tests_of, candidates))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rejected: Counter[str] = Counter()
    accepted, sandbox_s, prompts_served = 0, 0.0, set()
    with open(out / CORPUS_FILE, "w") as corpus, open(out / REJECTS_FILE, "w") as rejects:
        for n, (c, (reason, detail, info)) in enumerate(zip(candidates, verdicts)):
            sandbox_s += info.get("sandbox_s", 0.0)
            extra: dict[str, Any] = {}
            if reason is None:
                reason, extra = index.match(c.code)
            if reason is not None:
                rejected[reason] += 1
                rejects.write(json.dumps({"candidate": n, "prompt_id": c.prompt_id, "generator": c.generator,
                                          "reason": reason, "detail": detail, **extra, "code": c.code}) + "\n")
                continue
            doc_id = f"{SOURCE}/{c.prompt_id}/{n}"
            index.add(doc_id, c.code)
            accepted += 1
            prompts_served.add(c.prompt_id)
            corpus.write(json.dumps({"id": doc_id, "text": c.code, "domain": DOMAIN, "source": SOURCE,
                                     "synthetic": True, "generator": c.generator, "prompt_id": c.prompt_id,
                                     "tests_source": info["tests_source"], "tests": info["tests"]}) + "\n")
    assert accepted + sum(rejected.values()) == len(candidates)  # every candidate is accounted for
    summary = {
        "candidates": len(candidates), "accepted": accepted,
        "acceptance_rate": round(accepted / len(candidates), 4) if candidates else None,
        "rejected": {r: rejected.get(r, 0) for r in REASONS},
        "prompts": len(prompts), "prompts_with_accepted": len(prompts_served),
        "generators": dict(Counter(c.generator for c in candidates)),
        "reference_units": reference_units, "sandbox_seconds": round(sandbox_s, 2),
        "duration_s": round(time.monotonic() - started, 2), "config": config.model_dump(),
        "files": {"corpus": CORPUS_FILE, "rejects": REJECTS_FILE},
    }
    write_json_atomic(out / SUMMARY_FILE, summary)
    return summary
