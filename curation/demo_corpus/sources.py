"""The demo corpus's sources: real text this machine already has, read in sorted order.

See `curation.demo_corpus` for what each domain reads and why.
"""

from __future__ import annotations

import ast
import email
import gc
import gzip
import hashlib
import os
import re
import sys
import sysconfig
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from pydoc_data import topics
from typing import Any, Callable, Iterator

DOMAINS = ("web", "code", "books", "wiki", "math")
MAX_FILE_TEXT_BYTES = 4_000_000  # text per output file: several files per domain for parallel reads
MAX_SOURCE_FILE_BYTES = 200_000  # bigger files are generated tables or concatenated licence lists
MIN_DOC_CHARS = 200
DOC_DIR = Path("/usr/share/doc")
INFO_DIR = Path("/usr/share/info")
LICENSE_DIR = Path("/usr/share/common-licenses")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_TEST_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages"})


# ----------------------------------------------------------------------------- documents

@dataclass
class Doc:
    id: str
    text: str
    url: str | None
    domain: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "url": self.url, "domain": self.domain, "metadata": self.metadata}


@dataclass
class _Raw:
    """One document as a source yields it, before it has an id."""

    text: str
    url: str | None
    path: str
    license: str
    topic: str


@dataclass(frozen=True)
class _Source:
    name: str
    domain: str
    read: Callable[[], Iterator[_Raw]]


def _clean(text: str) -> str:
    return _CONTROL.sub("", text).strip()


def _read_text(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="replace")


def _walk_py(root: Path, skip: frozenset[str] = frozenset()) -> Iterator[Path]:
    """`.py` files under `root` in sorted order, without test folders and oversized files."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _TEST_DIRS and d not in skip and not d.endswith(".dist-info"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.endswith(".py") and not name.startswith("__editable__") and path.stat().st_size <= MAX_SOURCE_FILE_BYTES:
                yield path


def _docstrings(source: str) -> str:
    """The docstrings of the module, its classes and functions, in source order."""
    # NOTE: the parse allocates ~10 objects per source byte; with the collector on, its sweeps
    # cost ~40% of the time (sympy: 17 MB of source). An AST has no cycles to collect.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        with warnings.catch_warnings():  # old docstrings have invalid escapes: SyntaxWarning spam
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    finally:
        if gc_was_on:
            gc.enable()
    docs, stack = [], [tree]
    while stack:  # only statement bodies: far fewer nodes than ast.walk visits
        node = stack.pop()
        doc = ast.get_docstring(node, clean=True)
        if doc:
            docs.append(doc)
        stack.extend(reversed([n for n in node.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]))
    return "\n\n".join(docs)


def _site_dirs() -> list[Path]:
    dirs = {Path(p).resolve() for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()}
    return sorted(dirs)


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


# ----------------------------------------------------------------------------- sources

def _stdlib_code() -> Iterator[_Raw]:
    root = _stdlib_root()
    for path in _walk_py(root):
        rel = path.relative_to(root).as_posix()
        yield _Raw(_read_text(path), f"https://github.com/python/cpython/blob/3.11/Lib/{rel}", str(path),
                   "PSF-2.0", "stdlib/" + rel.split("/")[0].removesuffix(".py"))


def _pydoc_topics() -> Iterator[_Raw]:
    for name in sorted(topics.topics):
        yield _Raw(topics.topics[name], f"https://docs.python.org/3.11/topics/{name}.html",
                   f"{topics.__file__}::{name}", "PSF-2.0", "python-reference")


_INFO_HEADER = re.compile(r"^File: ([^,\s]+?)\.info,\s+Node: ([^,\n]+)")


def info_nodes() -> Iterator[_Raw]:
    if not INFO_DIR.is_dir():
        return
    for path in sorted(INFO_DIR.glob("*.info*.gz")):
        text = _read_text(path)
        license_hint = "GFDL" if "Free Documentation License" in text[:4000] else ""
        for part in text.split("\x1f\n")[1:]:
            head, _, body = part.partition("\n")
            match = _INFO_HEADER.match(head)
            if match:  # the rest are tag tables and indirect tables
                manual, node = match.groups()
                yield _Raw(body, None, f"{path}::{node.strip()}", license_hint, f"manual/{manual}")


def _package_readmes() -> Iterator[_Raw]:
    for site in _site_dirs():
        for path in sorted(site.glob("*.dist-info/METADATA")):
            msg = email.message_from_bytes(path.read_bytes())
            name = str(msg.get("Name", "")).strip()
            if not name or name.lower() == "flywheel":  # this project's README changes with every commit
                continue
            license_hint = str(msg.get("License-Expression") or msg.get("License") or "").strip().split("\n")[0][:80]
            body = msg.get_payload()
            yield _Raw(body if isinstance(body, str) else "", f"https://pypi.org/project/{name}/", str(path),
                       license_hint, "python-package-readme")


_DEP5_LICENSE = re.compile(r"^License:[ \t]*(\S[^\n]*)$", re.MULTILINE)


def _debian_copyrights() -> Iterator[_Raw]:
    for path in sorted(DOC_DIR.glob("*/copyright")):
        if path.stat().st_size > MAX_SOURCE_FILE_BYTES:
            continue
        text = _read_text(path)
        licenses = sorted({m.strip() for m in _DEP5_LICENSE.findall(text)})[:5]
        yield _Raw(text, f"https://packages.debian.org/{path.parent.name}/copyright", str(path),
                   ", ".join(licenses), "debian-copyright")


def _common_licenses() -> Iterator[_Raw]:
    if not LICENSE_DIR.is_dir():
        return
    for path in sorted(LICENSE_DIR.iterdir()):
        if path.is_file():
            yield _Raw(_read_text(path), f"https://sources.debian.org/src/base-files/latest/licenses/{path.name}/",
                       str(path), path.name, "license-text")


def _package_docstrings(package: str, url_base: str) -> Callable[[], Iterator[_Raw]]:
    def read() -> Iterator[_Raw]:
        for site in _site_dirs():
            root = site / package
            if not root.is_dir():
                continue
            for path in _walk_py(root):
                rel = path.relative_to(site).as_posix()
                parts = rel.removesuffix(".py").split("/")
                yield _Raw(_docstrings(_read_text(path)), f"{url_base}/{rel}", str(path), "BSD-3-Clause",
                           ".".join(parts[:2]) if len(parts) > 2 else package)
            return  # the first site that has the package is the one Python imports
    return read


def _debian_readmes() -> Iterator[_Raw]:
    for path in sorted(p for pattern in ("*/README*", "*/NEWS*") for p in DOC_DIR.glob(pattern)):
        if path.is_file() and path.stat().st_size <= MAX_SOURCE_FILE_BYTES:
            name = path.name.removesuffix(".gz")
            yield _Raw(_read_text(path), f"https://sources.debian.org/src/{path.parent.name}/latest/debian/{name}/",
                       str(path), "", "debian-readme")


def _stdlib_docstrings() -> Iterator[_Raw]:
    root = _stdlib_root()
    for path in _walk_py(root):
        module = path.relative_to(root).as_posix().removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        yield _Raw(_docstrings(_read_text(path)), f"https://docs.python.org/3.11/library/{module}.html", str(path),
                   "PSF-2.0", "stdlib/" + module.split(".")[0])


# Packages whose docstrings are the math held-out text: no other source (the code reference and
# top-up included) may read them.
MATH_HELDOUT_PACKAGES = {"scipy": ("optimize", "stats", "linalg", "integrate", "signal", "interpolate", "special",
                                   "spatial", "fft", "ndimage", "differentiate", "cluster", "odr"),
                         "numpy": ("polynomial", "linalg", "fft", "random")}  # fmt: skip


def _site_package_code() -> Iterator[_Raw]:
    for site in _site_dirs():
        for path in _walk_py(site, skip=frozenset({"sympy", "mpmath", *MATH_HELDOUT_PACKAGES})):
            rel = path.relative_to(site).as_posix()
            yield _Raw(_read_text(path), None, str(path), "", "site-packages/" + rel.split("/")[0].removesuffix(".py"))


PRIMARY_SOURCES = (
    _Source("stdlib", "code", _stdlib_code),
    _Source("pydoc", "books", _pydoc_topics),
    _Source("info", "books", info_nodes),
    _Source("pypi", "web", _package_readmes),
    _Source("debcopyright", "web", _debian_copyrights),
    _Source("licenses", "web", _common_licenses),
    _Source("mpmath", "math", _package_docstrings("mpmath", "https://github.com/mpmath/mpmath/blob/master")),
    _Source("sympy", "math", _package_docstrings("sympy", "https://github.com/sympy/sympy/blob/master")),
)
TOPUP_SOURCES = (
    _Source("debreadme", "web", _debian_readmes),
    _Source("docstrings", "books", _stdlib_docstrings),
    _Source("sitepackages", "code", _site_package_code),
)


def read_source(src: _Source, limit: int | None, budget: int | None,
                keep: Callable[[str, str], bool] | None = None) -> list[Doc]:
    """Docs of one source: at most `limit` of them, stopping once `budget` bytes are read; with
    `keep(text, path)`, only the cleaned texts it accepts (the others count toward neither)."""
    docs: list[Doc] = []
    nbytes = 0
    for raw in src.read():
        if (limit is not None and len(docs) >= limit) or (budget is not None and nbytes >= budget):
            break
        text = _clean(raw.text)
        if len(text) < MIN_DOC_CHARS or (keep is not None and not keep(text, raw.path)):
            continue
        meta = {"source": src.name, "path": raw.path, "license": raw.license, "topic": raw.topic}
        docs.append(Doc(f"{src.domain}-{src.name}-{len(docs):06d}", text, raw.url, src.domain, meta))
        nbytes += len(text.encode())
    return docs


# ----------------------------------------------------------------------------- reference text

# Reference text for the perplexity stage's n-gram models (cc_net trains on Wikipedia): real
# text of each domain's kind from sources the corpus does not read (unless the corpus needed
# its top-up sources on a small machine: then the two overlap, which the summary reports).
REFERENCE_SOURCES = (
    _Source("debreadme", "web", _debian_readmes),
    _Source("docstrings", "books", _stdlib_docstrings),
    _Source("sitepackages", "code", _site_package_code),
)


# ----------------------------------------------------------------------------- held-out text

def _math_module_docstrings() -> Iterator[_Raw]:
    """Docstrings of scipy's and numpy's math subpackages, one doc per module (BSD-3-Clause)."""
    for package, subpackages in MATH_HELDOUT_PACKAGES.items():
        for site in _site_dirs():
            if not (site / package).is_dir():
                continue
            for sub in subpackages:
                for path in _walk_py(site / package / sub):
                    rel = path.relative_to(site).as_posix()
                    yield _Raw(_docstrings(_read_text(path)), f"https://github.com/{package}/{package}/blob/main/{rel}",
                               str(path), "BSD-3-Clause", f"{package}.{sub}")
            break  # the first site that has the package is the one Python imports


_DOC_SUFFIXES = (".txt", ".md", ".rst")
_NOT_DOC_PROSE = ("README", "NEWS", "copyright", "changelog", "CHANGES", "LICENSE", "COPYING")


def _package_doc_files() -> Iterator[_Raw]:
    """Debian packages' prose documentation (/usr/share/doc/**/*.txt|md|rst): manuals, FAQs,
    design notes. Not the READMEs/NEWS (the web reference), copyright files (the corpus) or
    changelogs and licence texts."""
    for path in sorted(DOC_DIR.rglob("*")):
        name = path.name.removesuffix(".gz")
        if (name.endswith(_DOC_SUFFIXES) and not name.startswith(_NOT_DOC_PROSE) and path.is_file()
                and path.stat().st_size <= MAX_SOURCE_FILE_BYTES):
            rel = path.relative_to(DOC_DIR)
            yield _Raw(_read_text(path), f"https://sources.debian.org/src/{rel.parts[0]}/latest/", str(path), "",
                       f"package-doc/{rel.parts[0]}")


# Held-out evaluation text per domain (`build_heldout_texts`): never read by the corpus, never in
# the KenLM reference. web and code share their reference source and take the part a seeded hash
# of the text assigns to held-out (`is_heldout`); books and math have held-out sources of their
# own (the books reference, stdlib docstrings, is inside the corpus's stdlib code).
HELDOUT_SOURCES = (
    _Source("debreadme", "web", _debian_readmes),
    _Source("sitepackages", "code", _site_package_code),
    _Source("packagedocs", "books", _package_doc_files),
    _Source("mathdocstrings", "math", _math_module_docstrings),
)
# Of a source shared with the reference, 1 document in 2 (by hash) is held out: Debian's READMEs
# (536 here, many repeated per binary package) give ~120 distinct clean ones; the reference still
# fills its 3 MB from the other half.
HELDOUT_EVERY = 2


def is_heldout(seed: int, text: str) -> bool:
    """Which side of the reference/held-out split a document of a shared source is on: by its text,
    so equal texts can never land on both sides."""
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HELDOUT_EVERY == 0
