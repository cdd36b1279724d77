"""An offline post-training demo set from text this machine already has (`flywheel demo-instructions OUT`).

    OUT/chat-train.jsonl, chat-eval.jsonl             SFT conversations (contract.posttrain chat)
    OUT/preference-train.jsonl, preference-eval.jsonl  pairs: the right answer vs a plausible wrong one
    OUT/prompts.jsonl                                  PPO prompts: the train questions, no answers
    OUT/redteam-train.jsonl, redteam-heldout.jsonl     red-team prompts (curation.demo_redteam): requests by
                                                       category in the train / held-out jailbreak wrappers
                                                       (expected: refuse), benign look-alikes (comply)
    OUT/redteam-helpful.jsonl                          chat: the train look-alikes answered helpfully
    OUT/eval-texts.jsonl                               {"text"}: a held-out "benchmark" for decontamination
    OUT/posttrain.yaml                                 a `flywheel curate-posttrain` config for all of it
    OUT/summary.json                                   counts, planted items, sources found

Question/answer sources, each used when present (`summary.json` says which were):
- python:  public functions of a fixed list of standard-library modules; the answer is the first
           paragraph of the docstring (`inspect.getdoc`), behind the signature when it has one.
- command: man-page NAME lines (`ls \\- list directory contents`) from /usr/share/man/man1.
- math:    sympy identities (derivatives, expansions, factorisations, integrals) computed by sympy.
Rejected answers, one strategy per pair (seeded): another item's answer from the same source
and split (`other_answer`), the answer cut to its first third (`truncated`), or its words shuffled
(`shuffled`). The split is a seeded hash of the item id (1 in `eval_every` held out), so an item
stays in its split whatever else changes. Planted for the curation demo: a few train answers
copied into eval-texts.jsonl (decontamination must drop them) and a few answers holding fake
contact details (PII redaction must find them); `summary.json` lists both.

Same machine image + same seed = same bytes out. What this data can show: that SFT lowers the
loss on held-out answers in this format, that a reward model learns to prefer the right answer
over corrupted or mismatched ones (surface cues: truncation and shuffling are easy, another
docstring is harder), that PPO moves a policy on a learned reward, and that the curation steps
work on conversations. What it cannot show: helpfulness, truthfulness beyond recall of
docstrings, or real safety -- the red-team prompts are few and templated (20 requests in 12
wrappers; the held-out set shares the requests), and the preferences are synthetic, not human
comparisons.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import inspect
import json
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from contract.atomic import write_atomic
from curation.demo_redteam import helpful_chats, redteam_sets
from curation.pii import ENTITIES

MAN_DIR = Path("/usr/share/man/man1")
# Modules documented well enough to answer "what does X do" from the docstring alone; a fixed
# list (not a walk of the library) keeps the set the same across machines with one Python.
PYTHON_MODULES = ("base64", "bisect", "calendar", "colorsys", "copy", "csv", "difflib", "fnmatch", "fractions",
                  "functools", "glob", "gzip", "hashlib", "heapq", "html", "itertools", "json", "keyword",
                  "math", "operator", "os", "os.path", "random", "re", "shlex", "shutil", "statistics",
                  "string", "tempfile", "textwrap", "time", "unicodedata", "urllib.parse", "uuid", "zlib")
QUESTION_TEMPLATES = {
    "python": ("What does the Python function `{name}` do?", "Explain `{name}` from the Python standard library.",
               "In Python, what is `{name}` for?"),
    "command": ("What does the `{name}` command do?", "What is the `{name}` program?",
                "Explain what the `{name}` program is for."),
}
MIN_ANSWER_WORDS, MAX_ANSWER_CHARS = 5, 700
REJECTION_STRATEGIES = ("other_answer", "truncated", "shuffled")
PLANTED_CONTAMINATION = 5
REDTEAM_FILES = {"train": "redteam-train.jsonl", "heldout": "redteam-heldout.jsonl"}  # demo_redteam's SPLITS
HELPFUL_FILE = "redteam-helpful.jsonl"
PLANTED_PII = (("Who maintains the `{name}` notes, and how do I reach them?",
                "The notes are kept by Dana Whitfield; write to dana.whitfield@example.org or call +1 415 555 0134."),
               ("Where do I send bug reports about `{name}`?",
                "Send them to Omar Haddad at omar.haddad@example.com, phone (212) 555-0187."),
               ("Can I get help with `{name}` by phone?",
                "Yes: the help desk of Greta Lindqvist answers at +44 20 7946 0321 and greta.l@example.net."))


@dataclass(frozen=True)
class Item:
    id: str
    source: str  # python | command | math
    topic: str  # the function, command or expression
    question: str
    answer: str


# -- sources ----------------------------------------------------------------------------------

def _first_paragraph(doc: str) -> str:
    para = doc.strip().split("\n\n")[0]
    return " ".join(para.split())


def _defined_in(obj: Any, module: Any) -> bool:
    """`obj` belongs to `module` (or its C accelerator), not imported from another public module:
    `statistics.namedtuple` is collections' function, not a statistics question."""
    owner = getattr(obj, "__module__", None) or module.__name__
    return owner == module.__name__ or owner.startswith("_") or owner in ("posix", "nt", "builtins")


def python_items(rng: random.Random) -> Iterator[Item]:
    seen: set[int] = set()  # aliases (bisect.bisect is bisect_right) give one item, the first name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated aliases warn on access
        for module_name in PYTHON_MODULES:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            for name in sorted(dir(module)):
                obj = getattr(module, name, None)
                if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                    continue
                if id(obj) in seen or not _defined_in(obj, module):
                    continue
                seen.add(id(obj))
                doc = inspect.getdoc(obj)
                if not doc:
                    continue
                answer = _first_paragraph(doc)
                if len(answer.split()) < MIN_ANSWER_WORDS or len(answer) > MAX_ANSWER_CHARS:
                    continue
                qualified = f"{module_name}.{name}"
                try:  # a default that is an object prints its address: not the same twice
                    signature = f"`{qualified}{_ADDRESS.sub('', str(inspect.signature(obj)))}`: "
                except (TypeError, ValueError):
                    signature = f"`{qualified}`: "
                question = rng.choice(QUESTION_TEMPLATES["python"]).format(name=qualified)
                yield Item(f"python-{qualified}", "python", qualified, question, signature + answer)


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_NAME_LINE = re.compile(r"^\.SH\s+\"?NAME\"?\s*$", re.IGNORECASE)
_TROFF = re.compile(r"\\f[BIRP]|\\\(..|\\[&|^]|\\s[-+]?\d")
_TROFF_STRINGS = {"\\*(Aq": "'", "\\*(lq": '"', "\\*(rq": '"', "\\(aq": "'", "\\(lq": '"', "\\(rq": '"'}


def man_summary(path: Path) -> tuple[str, str] | None:
    """(command, summary) from a man page's NAME section, or None when it has none."""
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace").splitlines()
    except (OSError, EOFError):
        return None
    for i, line in enumerate(lines):
        if _NAME_LINE.match(line):
            body: list[str] = []
            for nxt in lines[i + 1:i + 6]:
                # a page for several commands names each on its own `name \- summary` line
                if nxt.startswith(".SH") or (body and "\\-" in nxt):
                    break
                if not nxt.startswith((".", "'")):
                    body.append(nxt)
            text = " ".join(body)
            for escape, char in _TROFF_STRINGS.items():
                text = text.replace(escape, char)
            text = _TROFF.sub("", text).replace("\\-", "-").replace("\\", "")
            name, sep, summary = text.partition(" - ")
            summary = " ".join(summary.split())
            if sep and summary and len(summary.split()) >= 2:
                return name.split(",")[0].strip(), summary
            return None
    return None


def command_items(rng: random.Random, limit: int) -> Iterator[Item]:
    if not MAN_DIR.is_dir():
        return
    pages = sorted(p for p in MAN_DIR.glob("*.1.gz") if not p.is_symlink())
    rng.shuffle(pages)
    seen: set[str] = set()
    for page in pages:
        if len(seen) >= limit:
            return
        found = man_summary(page)
        if found is None or found[0] in seen or not re.fullmatch(r"[\w.+-]+", found[0]):
            continue
        name, summary = found
        seen.add(name)
        question = rng.choice(QUESTION_TEMPLATES["command"]).format(name=name)
        yield Item(f"command-{name}", "command", name, question, f"`{name}`: {summary[0].upper()}{summary[1:]}.")


def math_items(rng: random.Random, limit: int) -> Iterator[Item]:
    try:
        import sympy  # optional: the math items exist only where sympy is installed
    except ImportError:
        return
    x = sympy.Symbol("x")
    functions = [sympy.sin(x), sympy.cos(x), sympy.exp(x), sympy.log(x), sympy.sqrt(x), sympy.tan(x)]
    makers: list[Callable[[int, int, Any], tuple[str, str, str] | None]] = [
        lambda a, b, f: (f"diff-{a}-{b}-{f}", f"What is the derivative of {b * x**a * f} with respect to x?",
                         f"d/dx [{b * x**a * f}] = {sympy.diff(b * x**a * f, x)}"),
        lambda a, b, f: (f"expand-{a}-{b}", f"Expand (x + {b})**{a + 1}.",
                         f"(x + {b})**{a + 1} = {sympy.expand((x + b)**(a + 1))}"),
        lambda a, b, f: (f"factor-{a}-{b}", f"Factor {sympy.expand((x - a) * (x + b))}.",
                         f"{sympy.expand((x - a) * (x + b))} = {sympy.factor((x - a) * (x + b))}"),
        # sin, cos and exp only: sympy's integrator takes seconds on x**4*tan(x) and then gives up.
        lambda a, b, f: (f"integrate-{a}-{f}", f"What is the integral of {x**a * f} with respect to x?",
                         f"∫ {x**a * f} dx = {sympy.integrate(x**a * f, x)} + C") if f in functions[:3] else None,
    ]
    seen: set[str] = set()
    for _ in range(limit * 4):
        if len(seen) >= limit:
            return
        a, b = rng.randint(1, 4), rng.randint(1, 9)
        f = rng.choice(functions[:3]) if rng.random() < 0.5 else rng.choice(functions)
        made = rng.choice(makers)(a, b, f)
        if made is None or made[0] in seen:
            continue
        key, question, answer = made
        seen.add(key)
        yield Item(f"math-{key}", "math", key, question, answer)


# -- preferences ----------------------------------------------------------------------------

def rejected_answer(item: Item, same_source: list[Item], rng: random.Random) -> tuple[str, str]:
    """(a plausible wrong answer, the strategy that made it); `same_source` holds items of the
    same source and split, so a train pair never carries a held-out answer."""
    words = item.answer.split()
    others = [o for o in same_source if o.answer != item.answer]
    usable = {"other_answer": bool(others), "truncated": len(words) >= 6, "shuffled": len(words) >= 3}
    strategy = rng.choice([s for s in REJECTION_STRATEGIES if usable[s]] or ["truncated"])
    if strategy == "other_answer":
        return rng.choice(others).answer, strategy
    if strategy == "shuffled":
        shuffled = words[:]
        for _ in range(5):
            rng.shuffle(shuffled)
            if shuffled != words:
                return " ".join(shuffled), strategy
    return " ".join(words[:max(1, len(words) // 3)]), "truncated"


# -- the set ----------------------------------------------------------------------------------

def split_of(item_id: str, seed: int, eval_every: int) -> str:
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % eval_every == 0 else "train"


def _chat(item: Item) -> dict[str, Any]:
    return {"id": f"chat-{item.id}", "messages": [{"role": "user", "content": item.question},
                                                   {"role": "assistant", "content": item.answer}],
            "category": item.source, "source": "flywheel-demo-instructions"}


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode()


def build_demo_instructions(out: str | Path, *, seed: int = 0, max_commands: int = 400, max_math: int = 200,
                            eval_every: int = 10) -> dict[str, Any]:
    """Write the demo set into `out` (see the module docstring); returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    items = list(python_items(rng)) + list(command_items(rng, max_commands)) + list(math_items(rng, max_math))
    by_source: dict[str, list[Item]] = {}
    for item in items:
        by_source.setdefault(item.source, []).append(item)
    split = {item.id: split_of(item.id, seed, eval_every) for item in items}
    train = [i for i in items if split[i.id] == "train"]

    # Planted: fake contact details in a few answers, train answers copied into the "benchmark".
    planted_pii = []
    for k, (question, answer) in enumerate(PLANTED_PII):
        topic = rng.choice(train).topic
        item = Item(f"contact-{k}-{topic}", "contact", topic, question.format(name=topic), answer)
        items.append(item)
        split[item.id] = "train"
        planted_pii.append(f"chat-{item.id}")
    contaminated = sorted(rng.sample([i for i in train if len(i.answer.split()) >= 20], PLANTED_CONTAMINATION),
                          key=lambda i: i.id)

    chats = {s: [_chat(i) for i in items if split[i.id] == s] for s in ("train", "eval")}
    prefs: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    strategies: dict[str, int] = {}
    for item in items:
        if item.source not in by_source:  # planted contact items: no pairs
            continue
        peers = [o for o in by_source[item.source] if split[o.id] == split[item.id]]
        rejected, strategy = rejected_answer(item, peers, rng)
        strategies[strategy] = strategies.get(strategy, 0) + 1
        prefs[split[item.id]].append({"id": f"pref-{item.id}", "prompt": item.question, "chosen": item.answer,
                                      "rejected": rejected, "category": item.source,
                                      "source": "flywheel-demo-instructions", "meta": {"rejected_by": strategy}})
    prompts = [{"id": f"prompt-{i.id}", "prompt": i.question, "category": i.source,
                "source": "flywheel-demo-instructions"} for i in train]
    redteam = redteam_sets()
    eval_texts = [{"text": i.answer, "id": f"eval-{i.id}"} for i in items if split[i.id] == "eval"]
    eval_texts += [{"text": i.answer, "id": f"eval-planted-{i.id}"} for i in contaminated]

    files = {"chat-train.jsonl": chats["train"], "chat-eval.jsonl": chats["eval"],
             "preference-train.jsonl": prefs["train"], "preference-eval.jsonl": prefs["eval"],
             "prompts.jsonl": prompts, "eval-texts.jsonl": eval_texts, HELPFUL_FILE: helpful_chats("train"),
             **{REDTEAM_FILES[split]: records for split, records in redteam.items()}}
    for name, records in files.items():
        write_atomic(out / name, _jsonl(records))
    write_atomic(out / "posttrain.yaml", yaml.safe_dump(curation_config(out), sort_keys=False).encode())
    summary = {
        "seed": seed, "out": str(out),
        "records": {name: len(records) for name, records in files.items()},
        "items_by_source": {s: len(v) for s, v in sorted(by_source.items())},
        "sources_missing": [s for s in ("python", "command", "math") if s not in by_source],
        "rejection_strategies": dict(sorted(strategies.items())),
        "redteam_by_category": {split: _count(r["category"] for r in records) for split, records in redteam.items()},
        "planted": {"pii_chat_ids": planted_pii,
                    "contaminated_chat_ids": [f"chat-{i.id}" for i in contaminated]},
    }
    write_atomic(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def curation_config(out: Path) -> dict[str, Any]:
    """A `flywheel curate-posttrain` config for the set (paths relative to the working folder).
    The red-team prompts (both splits) are the prompt kind's eval split: they are for red-teaming,
    never for PPO."""
    def spec(name: str, split: str = "train", kind: str | None = None) -> dict[str, Any]:
        return {"path": str(out / name), "split": split, **({"kind": kind} if kind else {})}

    return {"inputs": [spec("chat-train.jsonl", kind="chat"), spec("chat-eval.jsonl", "eval", "chat"),
                       spec("preference-train.jsonl", kind="preference"),
                       spec("preference-eval.jsonl", "eval", "preference"),
                       spec("prompts.jsonl", kind="prompt"),
                       *[spec(name, "eval", "prompt") for name in REDTEAM_FILES.values()]],
            "output": str(out / "curated"), "seed": 0,
            "decontamination": {"eval_sets": [str(out / "eval-texts.jsonl")], "ngram": 13},
            # NOTE: no LOCATION: NER took "Linux" and "fromfiledate" for places in this text, and
            # a place named in a docstring is not personal data.
            "pii": {"entities": [e for e in ENTITIES if e != "LOCATION"]}}


def _count(values: Iterator[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts
