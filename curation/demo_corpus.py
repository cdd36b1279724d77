"""An offline demo corpus: real text from this machine plus seeded, recorded injections.

`build_demo_corpus(out_dir, seed)` writes

    out_dir/corpus/<domain>-NNNNN.jsonl.gz   one JSON object a line: id, text, url, domain, metadata
    out_dir/truth.json                       every injection, so stages can be scored (P/R)

and returns a summary (documents, bytes, files per domain; injections per kind; seconds).

Sources (real text, read in sorted order: same machine image + seed = same bytes out)
- code:  the standard library's `.py` files (no test folders, none over 200 KB).
- books: `pydoc_data.topics` (the Python reference, one doc per topic) and the info manuals
         in /usr/share/info (coreutils, sed, grep, ...; one doc per node).
- web:   package READMEs (`*.dist-info/METADATA` on the interpreter's site-packages),
         Debian `copyright` files and `/usr/share/common-licenses`. Many packages ship the
         same licence text: those are *real* exact/near duplicates and are kept.
- math:  the docstrings of `mpmath` and `sympy` (one doc per module), when installed.
- wiki:  nothing on this machine is wiki text, so the corpus has no wiki domain.
Only when these give fewer than `min_bytes` of text, top-up sources are read in order until
the total is reached: Debian README/NEWS files (web), standard-library docstrings (books),
other site-packages `.py` files (code). Never random text.

Ids are `<domain>-<source>-NNNNNN` (`code-stdlib-000123`); injected docs use the sources
`neardup`, `urlvariant` and `lang`. `metadata` holds source, path, license (a hint, may be
""), topic, and an `injection` object on every injected or planted doc.

Injections (`random.Random` seeded from `seed`; counts scale with the corpus, ~3-5% of docs)
- near_duplicates: copies of existing docs under new ids (and a mirror URL), at edit levels
  `exact` (same text), `light` (2-5% of words edited: substitutions, deletions, insertions,
  case and whitespace changes, scattered) and `heavy` (20-30% of words edited, in runs of
  2-8 words, as when a paragraph is rewritten). Each copy records its word-5-gram Jaccard.
- not_duplicates: pairs of different docs of the same domain and topic (same stdlib package,
  same manual, ...) with word-5-gram Jaccard < 0.1: hard negatives for dedup.
- repeated_sentences: boilerplate sentences (cookie banners, "All rights reserved.", share
  lines) planted as their own paragraph in many web/books docs, each occurrence's span kept.
- url_variants: exact copies of docs whose URL differs only by scheme (http), host case,
  an explicit default port, a trailing slash, a fragment, or tracking parameters (`utm_*`,
  `fbclid`, `gclid`); `canonical_url` is `curation.urls.canonicalize_url` of the original.
- pii: fake but well-formed emails, phone numbers (US and 8 other countries; all valid for the
  `phonenumbers` library), US SSNs, credit card numbers (Luhn-valid), IPv4 addresses, IBANs
  (mod-97-valid) and person names, planted in sentences in web/books docs. Types use
  Presidio's entity names.
- languages: 30 short paragraphs in de, fr, es, it, pt, nl, ru, zh, ja (domain web).

truth.json (keys sorted):
    near_duplicates   [{group, original, copies: [{id, level, edit_fraction, word_5gram_jaccard}]}]
    not_duplicates    [{a, b, domain, topic, word_5gram_jaccard}]
    repeated_sentences [{sentence, occurrences: [{doc_id, start, end}]}]
    url_variants      [{group, original_id, original_url, canonical_url, variants: [{id, url, kinds}]}]
    pii               [{doc_id, type, value, start, end, detail}]   detail: phone region, card brand,
                                                                    IBAN country, or ""
    languages         [{id, lang}]
    exact_duplicate_groups [[id, ...]]
    seed, spans
Spans are `[start, end)` offsets into the document's `text` as a Python str (code points).
Planted docs are never copied, so a planted sentence or PII item occurs only where recorded;
the real texts do contain their own e-mail addresses (package authors, Debian maintainers)
and their own repeated lines, which truth.json does not list. `exact_duplicate_groups` lists
every set of docs with identical text, natural or injected.
"""

from __future__ import annotations

import ast
import email
import gc
import gzip
import hashlib
import json
import os
import random
import re
import sys
import sysconfig
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from pydoc_data import topics
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

from curation.dedup.near_copies import edit_words
from curation.dedup.similarity import text_jaccard
from curation.urls import canonicalize_url

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


def _info_nodes() -> Iterator[_Raw]:
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


def _site_package_code() -> Iterator[_Raw]:
    for site in _site_dirs():
        for path in _walk_py(site, skip=frozenset({"sympy", "mpmath"})):
            rel = path.relative_to(site).as_posix()
            yield _Raw(_read_text(path), None, str(path), "", "site-packages/" + rel.split("/")[0].removesuffix(".py"))


PRIMARY_SOURCES = (
    _Source("stdlib", "code", _stdlib_code),
    _Source("pydoc", "books", _pydoc_topics),
    _Source("info", "books", _info_nodes),
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


def _read_source(src: _Source, limit: int | None, budget: int | None) -> list[Doc]:
    """Docs of one source: at most `limit` of them, stopping once `budget` bytes are read."""
    docs: list[Doc] = []
    nbytes = 0
    for raw in src.read():
        if (limit is not None and len(docs) >= limit) or (budget is not None and nbytes >= budget):
            break
        text = _clean(raw.text)
        if len(text) < MIN_DOC_CHARS:
            continue
        meta = {"source": src.name, "path": raw.path, "license": raw.license, "topic": raw.topic}
        docs.append(Doc(f"{src.domain}-{src.name}-{len(docs):06d}", text, raw.url, src.domain, meta))
        nbytes += len(text.encode())
    return docs


# ----------------------------------------------------------------------------- injected text

BOILERPLATE = (
    "This website uses cookies to ensure you get the best experience on our website.",
    "By continuing to browse the site, you are agreeing to our use of cookies.",
    "All rights reserved.",
    "Share this page on Facebook, Twitter, LinkedIn or by email.",
    "Sign up for our newsletter to get the latest updates delivered to your inbox.",
    "Click here to accept all cookies and continue to the website.",
    "Skip to main content and use the navigation menu to browse all sections.",
    "This page was last edited on 12 March 2024, at 14:05.",
    "Let us know whether this page was helpful by leaving feedback below.",
    "Please enable JavaScript in your browser settings to view this content.",
    "Read our privacy policy to learn how we collect and use your personal data.",
)

# (lang, url, paragraph): written for this corpus in a plain, public-domain style.
LANGUAGE_DOCS = (
    ("de", "https://www.stadtanzeiger-online.de/leben/herbst-in-deutschland",
     "Der Herbst ist in vielen Teilen Deutschlands die schönste Jahreszeit. Die Blätter der Bäume färben sich gelb "
     "und rot, und an klaren Tagen kann man weit über das Land sehen. Viele Familien nutzen die Wochenenden für lange "
     "Spaziergänge im Wald. Am Abend wird es früh dunkel, und in den Häusern werden die ersten Kerzen angezündet."),
    ("de", "https://www.stadtanzeiger-online.de/lokales/bibliothek-oeffnungszeiten",
     "Die Stadtbibliothek hat ihre Öffnungszeiten erweitert. Ab dem kommenden Monat ist sie auch am Samstagnachmittag "
     "geöffnet. Neben Büchern können Besucher Zeitschriften, Hörbücher und Filme ausleihen. Für Schüler gibt es "
     "außerdem einen ruhigen Lesesaal, in dem sie ihre Hausaufgaben machen können."),
    ("de", "https://www.kuechenwissen.de/brot-tradition",
     "Brot hat in Deutschland eine lange Tradition. In fast jedem Ort gibt es eine Bäckerei, die schon früh am Morgen "
     "frische Brötchen verkauft. Besonders beliebt sind Roggenbrot und Vollkornbrot, die lange frisch bleiben. Viele "
     "Bäcker backen ihre Spezialitäten noch nach alten Familienrezepten."),
    ("de", "https://www.reisetipps-bahn.de/ratgeber/fahrkarten",
     "Wer mit der Bahn reist, sollte seine Fahrkarte rechtzeitig kaufen. Die Züge sind am Freitagabend und am Sonntag "
     "oft voll. Eine Sitzplatzreservierung kostet nur wenig und erspart viel Ärger. Während der Fahrt kann man lesen, "
     "arbeiten oder einfach aus dem Fenster schauen."),
    ("fr", "https://www.journal-du-quartier.fr/vie-locale/marche-du-samedi",
     "Le marché du samedi matin est l'un des moments préférés des habitants du quartier. On y trouve des légumes de "
     "saison, des fromages de la région et du pain encore chaud. Les commerçants connaissent leurs clients et prennent "
     "le temps de discuter avec eux. Vers midi, les terrasses des cafés voisins commencent à se remplir."),
    ("fr", "https://www.journal-du-quartier.fr/ville/plantation-arbres",
     "La ville a décidé de planter plus de deux mille arbres le long de ses avenues principales. Selon le maire, ce "
     "projet doit rendre les rues plus agréables pendant les étés chauds. Les travaux commenceront au printemps et "
     "dureront environ trois ans. Les habitants sont invités à donner leur avis lors d'une réunion publique."),
    ("fr", "https://www.apprendre-facile.fr/conseils/langues-etrangeres",
     "Apprendre une langue étrangère demande de la patience et de la régularité. Il vaut mieux étudier un peu chaque "
     "jour que beaucoup une fois par semaine. Lire des journaux, écouter la radio et parler avec des amis sont "
     "d'excellents moyens de progresser. Avec le temps, les phrases deviennent plus naturelles."),
    ("fr", "https://www.agenda-culturel.fr/expositions/peintres-xixe",
     "Le musée des beaux-arts présente cette année une exposition consacrée aux peintres du dix-neuvième siècle. Plus "
     "de cent tableaux, prêtés par des collections du monde entier, sont réunis pour la première fois. Des visites "
     "guidées sont proposées tous les jours à quatorze heures. L'entrée est gratuite pour les moins de dix-huit ans."),
    ("es", "https://www.diario-costero.es/sociedad/vacaciones-en-la-costa",
     "En verano, muchas familias españolas pasan sus vacaciones en la costa. Las playas del Mediterráneo se llenan de "
     "gente desde la mañana hasta la noche. Por la tarde, cuando el calor es más fuerte, es costumbre descansar a la "
     "sombra. Al anochecer, los paseos marítimos se llenan de vida y de música."),
    ("es", "https://www.cocina-de-casa.es/recetas/tortilla-de-patatas",
     "La receta tradicional de la tortilla de patatas es sencilla, pero requiere paciencia. Primero se fríen las "
     "patatas a fuego lento con un poco de cebolla. Después se mezclan con los huevos batidos y se cuaja todo en la "
     "sartén. Cada familia defiende su propia versión, con o sin cebolla."),
    ("es", "https://www.diario-costero.es/cultura/nuevo-centro-cultural",
     "El ayuntamiento ha abierto un nuevo centro cultural en el barrio antiguo. El edificio, que antes era una fábrica "
     "de tejidos, cuenta ahora con una biblioteca, salas de ensayo y un pequeño teatro. Las actividades están "
     "dirigidas a personas de todas las edades. La inscripción en los talleres es gratuita."),
    ("es", "https://www.vida-sana.es/consejos/caminar-cada-dia",
     "Caminar todos los días es una de las formas más sencillas de cuidar la salud. No hace falta equipo especial ni "
     "mucho tiempo libre. Media hora de paseo a buen ritmo ayuda a mejorar el ánimo y a dormir mejor. Los médicos "
     "recomiendan empezar poco a poco y aumentar la distancia con el tiempo."),
    ("it", "https://www.notizie-cittadine.it/centro-storico-pedonale",
     "Il centro storico della città è chiuso al traffico durante il fine settimana. I residenti e i turisti possono "
     "passeggiare tranquillamente tra le piazze e le vie strette. Molti negozi restano aperti fino a tardi e le "
     "gelaterie sono sempre affollate. La sera, le chiese illuminate offrono uno spettacolo davvero suggestivo."),
    ("it", "https://www.ricette-della-nonna.it/pasta-fatta-in-casa",
     "La pasta fatta in casa richiede pochi ingredienti: farina, uova e un pizzico di sale. L'impasto deve essere "
     "lavorato a lungo, finché diventa liscio ed elastico. Dopo averlo lasciato riposare, si stende con il "
     "mattarello e si taglia nella forma desiderata. Il risultato ripaga sempre la fatica."),
    ("it", "https://www.notizie-cittadine.it/cultura/incontri-con-autore",
     "La biblioteca comunale organizza ogni mese un incontro con un autore. Gli incontri sono aperti a tutti e si "
     "svolgono nella sala grande al primo piano. Dopo la presentazione del libro, il pubblico può fare domande e "
     "chiedere una dedica. Si consiglia di arrivare con qualche minuto di anticipo."),
    ("pt", "https://www.guia-de-lisboa.pt/cidade/colinas-e-miradouros",
     "Lisboa é conhecida pelas suas colinas, pelos elétricos amarelos e pela luz especial do fim da tarde. Muitos "
     "visitantes sobem até aos miradouros para ver o rio Tejo. Nos bairros antigos, as ruas estreitas escondem "
     "pequenas tascas onde se come bem e barato. À noite, ouve-se fado em várias casas da cidade."),
    ("pt", "https://www.jornal-da-vila.pt/educacao/novos-computadores",
     "A escola da vila recebeu novos computadores para a sala de informática. Os alunos poderão agora aprender "
     "programação desde os primeiros anos. Os professores participaram numa formação durante as férias para preparar "
     "as aulas. A direção espera que o projeto seja alargado a outras escolas da região."),
    ("pt", "https://www.sabores-do-brasil.com.br/cafe-no-dia-a-dia",
     "O café faz parte do dia a dia dos brasileiros. Logo pela manhã, o cheiro do café fresco enche as cozinhas. Ao "
     "longo do dia, é comum oferecer um cafezinho às visitas como sinal de hospitalidade. Nas cidades do interior, "
     "muitas famílias ainda torram e moem os grãos em casa."),
    ("nl", "https://www.dagblad-regio.nl/verkeer/fietsen-naar-het-werk",
     "In Nederland gaan veel mensen met de fiets naar hun werk of naar school. Er zijn overal brede fietspaden, en in "
     "de steden staan grote fietsenstallingen bij de stations. Ook bij regen en wind stappen de meeste mensen gewoon "
     "op de fiets. Kinderen leren al heel jong veilig fietsen in het verkeer."),
    ("nl", "https://www.dagblad-regio.nl/gemeente/nieuw-park",
     "De gemeente heeft plannen gemaakt voor een nieuw park aan de rand van de stad. Er komen wandelpaden, een "
     "speeltuin en een grote vijver. Bewoners konden de afgelopen weken hun ideeën insturen via een online formulier. "
     "De bouw begint naar verwachting volgend voorjaar."),
    ("nl", "https://www.uit-in-de-stad.nl/markt-op-zaterdag",
     "Op zaterdag is de markt op het plein altijd druk. Je kunt er verse groenten, kaas, vis en bloemen kopen. Veel "
     "kramen staan er al tientallen jaren en de verkopers kennen hun vaste klanten bij naam. Na het boodschappen doen "
     "drinken veel mensen nog een kop koffie op een terras."),
    ("ru", "https://www.gorodskie-novosti.ru/zhizn/zima-v-moskve",
     "Зимой в Москве рано темнеет, но город не становится менее оживлённым. На улицах зажигаются огни, а в парках "
     "заливают катки. Многие жители после работы идут кататься на коньках или гулять по набережной. В выходные в "
     "театрах и музеях бывает особенно много посетителей."),
    ("ru", "https://www.gorodskie-novosti.ru/kultura/chitalnyj-zal",
     "Городская библиотека открыла новый читальный зал для школьников. Здесь можно бесплатно пользоваться "
     "компьютерами и готовиться к экзаменам. Библиотекари помогают найти нужные книги и статьи. Зал работает каждый "
     "день, кроме воскресенья, с десяти утра до восьми вечера."),
    ("ru", "https://www.dachnye-sovety.ru/leto-na-dache",
     "Летом многие семьи уезжают на дачу. Там они выращивают овощи, ягоды и цветы, а вечером пьют чай на веранде. "
     "Дети целыми днями играют на свежем воздухе и купаются в реке. Для многих горожан дача — это возможность "
     "отдохнуть от шума и суеты."),
    ("zh", "https://www.chengshi-shenghuo.cn/news/spring-park",
     "春天到了，公园里的花都开了。周末的时候，很多家庭带着孩子去公园散步、放风筝。老人们在树下下棋、聊天，年轻人则在湖边跑步。"
     "天气好的时候，整个公园都充满了笑声。"),
    ("zh", "https://www.chengshi-shenghuo.cn/news/library-reopens",
     "这家图书馆上个月重新开放了。馆内增加了新的阅览室和儿童区，还提供免费的无线网络。读者可以在网上预约借书，也可以使用自助借还机。"
     "工作人员表示，开放时间也会延长到晚上九点。"),
    ("zh", "https://www.xuexi-fangfa.cn/articles/learning-languages",
     "学习一门外语需要耐心和坚持。每天花一点时间读书、听广播、和朋友练习对话，比一周只学一次效果更好。"
     "刚开始的时候可能会觉得很难，但是慢慢地就会发现自己的进步。"),
    ("ja", "https://www.kisetsu-dayori.jp/haru/ohanami",
     "春になると、日本各地で桜の花が咲きます。人々は公園や川沿いに集まり、お花見を楽しみます。夜には桜がライトアップされ、"
     "昼間とは違った美しさを見せてくれます。桜の季節はとても短いので、多くの人が毎年この時期を楽しみにしています。"),
    ("ja", "https://www.machi-news.jp/shisetsu/toshokan",
     "駅前に新しい図書館がオープンしました。館内には広い閲覧室や子ども向けのコーナーがあり、無料でインターネットも利用できます。"
     "開館時間は午前九時から午後八時までで、月曜日は休館日です。"),
    ("ja", "https://www.kurashi-no-techo.jp/shoku/asagohan",
     "日本の朝ごはんは、ご飯と味噌汁、焼き魚、漬物などが一般的です。最近はパンとコーヒーで済ませる人も増えていますが、"
     "週末にはゆっくりと和食の朝ごはんを楽しむ家庭も多いです。"),
)

_FIRST = ("James", "Maria", "Wei", "Aisha", "Carlos", "Olivia", "Dmitri", "Priya", "Lucas", "Fatima", "Hannah",
          "Kenji", "Sophie", "Mateo", "Grace", "Omar", "Elena", "Daniel", "Chloe", "Samuel")
_LAST = ("Johnson", "Garcia", "Chen", "Okafor", "Schneider", "Nguyen", "Rossi", "Kowalski", "Patel", "Andersson",
         "Silva", "Kim", "Dubois", "Novak", "Thompson", "Haddad", "Yamamoto", "Fischer", "Martinez", "Brennan")
_MAIL_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "example.org", "northwind-traders.com",
                 "acme-labs.io", "mail.example.com")
_US_AREAS = (212, 305, 312, 415, 503, 617, 702, 713, 206, 404, 512, 720)
# (region, format): '#' is any digit, 'N' a digit 2-9 (numbering plans forbid a leading 0/1 there).
_PHONE_FORMATS = (
    ("US", "({area}) N#N-####"), ("US", "{area}-N#N-####"), ("US", "+1 {area} N#N ####"), ("US", "{area}.N#N.####"),
    ("GB", "+44 20 7946 0###"), ("DE", "+49 30 N#######"), ("FR", "+33 1 4# ## ## ##"), ("ES", "+34 91 ### ## ##"),
    ("JP", "+81 3-N###-####"), ("IN", "+91 9#### #####"), ("BR", "+55 11 9####-####"), ("AU", "+61 2 9### ####"),
)
_PUBLIC_OCTETS = (23, 34, 45, 52, 63, 66, 78, 81, 93, 104, 141, 151, 176, 185, 203, 212)
# (country, bank-code alphabet, bank-code length, account digits): BBAN = bank code + digits.
_IBAN_FORMATS = (("DE", "", 0, 18), ("GB", "NWBKBARCLOYDHBUKMIDL", 4, 14), ("NL", "ABNARABOINGBTRIO", 4, 10),
                 ("ES", "", 0, 20))

PII_TEMPLATES = {
    "EMAIL_ADDRESS": ("For questions about this release, write to {EMAIL_ADDRESS}.",
                      "Send bug reports to {EMAIL_ADDRESS} and include the full error message."),
    "PHONE_NUMBER": ("Call our support line at {PHONE_NUMBER} between 9 am and 5 pm.",
                     "For urgent matters, please phone {PHONE_NUMBER}."),
    "US_SSN": ("Employee social security number on file: {US_SSN}.",
               "Please verify the SSN {US_SSN} before processing the claim."),
    "CREDIT_CARD": ("The payment was made with card number {CREDIT_CARD}.",
                    "Card on file: {CREDIT_CARD}."),
    "IP_ADDRESS": ("The request was logged from IP address {IP_ADDRESS}.",
                   "The server at {IP_ADDRESS} did not respond to the health check."),
    "IBAN_CODE": ("Please transfer the registration fee to IBAN {IBAN_CODE}.",
                  "Refunds are paid to the account {IBAN_CODE}."),
    "PERSON": ("This section was reviewed by {PERSON} before the last release.",
               "Thanks to {PERSON} for reporting the issue and testing the fix.",
               "Questions? Contact {PERSON} at {EMAIL_ADDRESS} or {PHONE_NUMBER}."),
}


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def luhn_check_digit(payload: str) -> str:
    """The digit that makes `payload + digit` pass the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def iban_check_digits(country: str, bban: str) -> str:
    """ISO 13616 check digits: 98 - (BBAN + country + '00' as a number) mod 97."""
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{98 - int(numeric) % 97:02d}"


def _fake_email(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST).lower(), rng.choice(_LAST).lower()
    local = rng.choice((f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}{rng.randint(1, 99)}"))
    return f"{local}@{rng.choice(_MAIL_DOMAINS)}"


def _fake_phone(rng: random.Random) -> tuple[str, str]:
    region, fmt = rng.choice(_PHONE_FORMATS)
    fmt = fmt.replace("{area}", str(rng.choice(_US_AREAS)))
    digit = {"#": "0123456789", "N": "23456789"}
    return "".join(rng.choice(digit[c]) if c in digit else c for c in fmt), region


def _fake_ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _fake_card(rng: random.Random) -> tuple[str, str]:
    brand, prefix, length = rng.choice((("visa", "4", 16), ("mastercard", str(rng.randint(51, 55)), 16),
                                        ("amex", rng.choice(("34", "37")), 15), ("discover", "6011", 16)))
    payload = prefix + _digits(rng, length - len(prefix) - 1)
    number = payload + luhn_check_digit(payload)
    sep = rng.choice((" ", "-", ""))
    groups = (4, 6, 5) if length == 15 else (4, 4, 4, 4)
    cuts, pos = [], 0
    for g in groups:
        cuts.append(number[pos:pos + g])
        pos += g
    return sep.join(cuts), brand


def _fake_ip(rng: random.Random) -> str:
    return f"{rng.choice(_PUBLIC_OCTETS)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _fake_iban(rng: random.Random) -> tuple[str, str]:
    country, banks, bank_len, n_digits = rng.choice(_IBAN_FORMATS)
    bank = ""
    if bank_len:
        i = rng.randrange(len(banks) // bank_len) * bank_len
        bank = banks[i:i + bank_len]
    bban = bank + _digits(rng, n_digits)
    compact = country + iban_check_digits(country, bban) + bban
    if rng.random() < 0.5:
        return compact, country
    return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4)), country


def _fake_value(kind: str, rng: random.Random) -> tuple[str, str]:
    """(value, detail) for one PII type; detail is the region, brand or country when it has one."""
    if kind == "EMAIL_ADDRESS":
        return _fake_email(rng), ""
    if kind == "PHONE_NUMBER":
        return _fake_phone(rng)
    if kind == "US_SSN":
        return _fake_ssn(rng), ""
    if kind == "CREDIT_CARD":
        return _fake_card(rng)
    if kind == "IP_ADDRESS":
        return _fake_ip(rng), ""
    if kind == "IBAN_CODE":
        return _fake_iban(rng)
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}", ""


_FIELD = re.compile(r"\{([A-Z_]+)\}")


def _fill_template(template: str, rng: random.Random) -> tuple[str, list[dict[str, Any]]]:
    """The sentence and its PII items, with spans relative to the sentence."""
    out, items, pos = [], [], 0
    length = 0
    for m in _FIELD.finditer(template):
        out.append(template[pos:m.start()])
        length += m.start() - pos
        value, detail = _fake_value(m.group(1), rng)
        items.append({"type": m.group(1), "value": value, "start": length, "end": length + len(value), "detail": detail})
        out.append(value)
        length += len(value)
        pos = m.end()
    out.append(template[pos:])
    return "".join(out), items


# ----------------------------------------------------------------------------- edits

# ----------------------------------------------------------------------------- URLs

_MIRRORS = ("mirror.example-archive.net", "cache.example-search.com", "docs-copy.example.org")
_FRAGMENTS = ("top", "readme", "description", "section-2", "license")
URL_VARIANT_KINDS = ("scheme", "host_case", "default_port", "trailing_slash", "fragment", "tracking")


def _mirror_url(url: str | None, mirror: str) -> str | None:
    """Where a scraped copy of the page at `url` lives: another host, the original's path."""
    if url is None:
        return None
    parts = urlsplit(url)
    return f"https://{mirror}/{parts.hostname}{parts.path}"


def _url_variant(url: str, kinds: list[str], rng: random.Random) -> str:
    parts = urlsplit(url)
    scheme, host, path, query, fragment = parts.scheme, parts.hostname or "", parts.path, parts.query, ""
    port = ""
    if "scheme" in kinds:
        scheme = "http" if scheme == "https" else "https"
    if "host_case" in kinds:
        letters = [i for i, c in enumerate(host) if c.isalpha()]
        up = set(rng.sample(letters, max(1, len(letters) // 3)))
        host = "".join(c.upper() if i in up else c for i, c in enumerate(host))
    if "default_port" in kinds:
        port = ":443" if scheme == "https" else ":80"
    if "trailing_slash" in kinds:
        path = path.rstrip("/") if path.endswith("/") and path != "/" else path + "/"
    if "fragment" in kinds:
        fragment = rng.choice(_FRAGMENTS)
    if "tracking" in kinds:
        params = rng.choice((
            ["utm_source=newsletter", "utm_medium=email", f"utm_campaign=spring{rng.randint(2019, 2025)}"],
            ["utm_source=twitter", "utm_medium=social"],
            [f"fbclid=IwAR{rng.getrandbits(96):024x}"],
            [f"gclid=Cj0KCQ{rng.getrandbits(80):020x}"],
        ))
        query = "&".join(([query] if query else []) + params)
    return urlunsplit((scheme, host + port, path, query, fragment))


# ----------------------------------------------------------------------------- injections

def _plant(doc: Doc, inserts: list[tuple[str, list[dict[str, Any]]]], rng: random.Random) -> list[tuple[int, dict]]:
    """Insert each sentence as its own paragraph of `doc`; returns (index into `inserts`, item).

    `inserts` holds (sentence, items with spans relative to the sentence); the returned items
    carry absolute `start`/`end` in the new `doc.text`.
    """
    text = doc.text
    # Paragraph starts: offset 0 and just after every blank line. End of text is a footer.
    starts = [0] + [m.end() for m in re.finditer(r"\n\n+", text)] + [len(text)]
    placed = sorted(((rng.choice(starts), k) for k in range(len(inserts))))
    pieces, out_items, prev, offset = [], [], 0, 0
    for pos, k in placed:
        sentence, items = inserts[k]
        pieces.append(text[prev:pos])
        offset += pos - prev
        prefix, suffix = ("\n\n", "") if pos == len(text) else ("", "\n\n")
        pieces.append(prefix + sentence + suffix)
        base = offset + len(prefix)
        for item in items:
            out_items.append((k, {**item, "start": base + item["start"], "end": base + item["end"]}))
        offset += len(prefix) + len(sentence) + len(suffix)
        prev = pos
    pieces.append(text[prev:])
    doc.text = "".join(pieces)
    return out_items


def _count(fraction: float, n: int, minimum: int) -> int:
    return max(minimum, round(fraction * n))


def _inject(base: list[Doc], seed: int) -> tuple[list[Doc], dict[str, Any]]:
    """Plant sentences and PII in some docs, add copies and foreign-language docs; the truth."""
    rng = random.Random(f"{seed}:inject")
    n = len(base)
    order = list(range(n))
    rng.shuffle(order)
    used: set[int] = set()

    def take(count: int, ok: Callable[[Doc], bool]) -> list[Doc]:
        picked = []
        for i in order:
            if len(picked) == count:
                break
            if i not in used and ok(base[i]):
                used.add(i)
                picked.append(base[i])
        return picked

    new: list[Doc] = []
    truth: dict[str, Any] = {}
    text_counts: dict[str, int] = {}
    for d in base:
        text_counts[d.text] = text_counts.get(d.text, 0) + 1

    def unique(d: Doc) -> bool:  # a copy of a natural duplicate would be ambiguous truth
        return text_counts[d.text] == 1

    def n_words(d: Doc) -> int:
        return len(d.text.split())

    def prose(d: Doc) -> bool:
        return d.domain in ("web", "books")

    # Near duplicates: one or two copies per original, levels in rotation.
    n_copies = _count(0.02, n, 6)
    originals = take(n_copies, lambda d: unique(d) and 80 <= n_words(d) and len(d.text) <= 100_000)
    levels = ("exact", "light", "heavy")
    groups, made = [], 0
    for g, original in enumerate(originals):
        if made >= n_copies:
            break
        copies = []
        n_group = 2 if rng.random() < 0.25 and made + 2 <= n_copies else 1
        for mirror in rng.sample(_MIRRORS, n_group):  # one mirror per copy: copies' URLs differ
            level = levels[made % 3]
            made += 1
            if level == "exact":
                text, frac = original.text, 0.0
            else:
                lo, hi = (0.02, 0.05) if level == "light" else (0.20, 0.30)
                text, frac = edit_words(original.text, rng.uniform(lo, hi), rng, in_runs=level == "heavy")
                if text == original.text:  # every op was a no-op: force one visible edit
                    text += " ."
            copy = Doc(f"{original.domain}-neardup-{made:06d}", text, _mirror_url(original.url, mirror), original.domain,
                       {**original.metadata, "injection": {"kind": "near_duplicate", "of": original.id, "level": level}})
            new.append(copy)
            copies.append({"id": copy.id, "level": level, "edit_fraction": round(frac, 4),
                           "word_5gram_jaccard": round(text_jaccard(original.text, text), 4)})
        groups.append({"group": f"nd-{g:05d}", "original": original.id, "copies": copies})
    spare = {d.id for d in originals[len(groups):]}  # picked but not needed: free for other roles
    used.difference_update(i for i in range(n) if base[i].id in spare)
    truth["near_duplicates"] = groups

    # URL variants: exact copies under URLs that canonicalise to the original's.
    url_groups, n_variants = [], 0
    n_url = _count(0.005, n, 3)
    for g, original in enumerate(take(n_url, lambda d: d.url is not None and unique(d))):
        variants, seen = [], {original.url}
        for _ in range(rng.randint(1, 3)):
            kinds = sorted(rng.sample(URL_VARIANT_KINDS, rng.randint(1, 3)), key=URL_VARIANT_KINDS.index)
            url = _url_variant(original.url, kinds, rng)
            if url in seen:
                continue
            seen.add(url)
            n_variants += 1
            copy = Doc(f"{original.domain}-urlvariant-{n_variants:06d}", original.text, url, original.domain,
                       {**original.metadata, "injection": {"kind": "url_variant", "of": original.id, "kinds": kinds}})
            new.append(copy)
            variants.append({"id": copy.id, "url": url, "kinds": kinds})
        if variants:
            url_groups.append({"group": f"url-{g:05d}", "original_id": original.id, "original_url": original.url,
                               "canonical_url": canonicalize_url(original.url), "variants": variants})
    truth["url_variants"] = url_groups

    # Unrelated docs of one topic: hard negatives (low 5-gram overlap, same subject).
    by_topic: dict[tuple[str, str], list[Doc]] = {}
    for i in order:
        d = base[i]
        if i not in used and unique(d) and n_words(d) >= 80:
            by_topic.setdefault((d.domain, d.metadata["topic"]), []).append(d)
    pairs = []
    topics = sorted(k for k, v in by_topic.items() if len(v) >= 2)
    rng.shuffle(topics)
    want = _count(0.005, n, 3)
    for key in topics * 2:  # a second pass lets big topics give a second pair
        if len(pairs) == want:
            break
        pool = [d for d in by_topic[key] if d.id not in {x for p in pairs for x in (p["a"], p["b"])}]
        for a, b in zip(pool[0::2], pool[1::2]):
            sim = text_jaccard(a.text, b.text)
            if sim < 0.1:
                pairs.append({"a": a.id, "b": b.id, "domain": key[0], "topic": key[1], "word_5gram_jaccard": round(sim, 4)})
                break
    for p in pairs:
        used.update(i for i in range(n) if base[i].id in (p["a"], p["b"]))
    truth["not_duplicates"] = pairs

    # Boilerplate sentences and PII, planted in web/books docs that nothing copies.
    n_prose = sum(1 for d in base if prose(d))
    occurrences: dict[str, list[dict[str, Any]]] = {s: [] for s in BOILERPLATE}
    slot = 0
    for doc in take(_count(0.05, n_prose, 2 * len(BOILERPLATE)), prose):  # each sentence twice or more
        inserts = []
        for _ in range(rng.randint(1, 2)):
            sentence = BOILERPLATE[slot % len(BOILERPLATE)]  # rotation: every sentence lands in many docs
            inserts.append((sentence, [{"start": 0, "end": len(sentence)}]))
            slot += 1
        for k, item in _plant(doc, inserts, rng):
            occurrences[inserts[k][0]].append({"doc_id": doc.id, "start": item["start"], "end": item["end"]})
        doc.metadata["injection"] = {"kind": "planted", "repeated_sentences": len(inserts)}
    truth["repeated_sentences"] = [{"sentence": s, "occurrences": occ} for s, occ in occurrences.items() if occ]

    pii_items = []
    pii_types = list(PII_TEMPLATES)
    for j, doc in enumerate(take(_count(0.03, n_prose, len(pii_types)), prose)):
        inserts = []
        for m in range(rng.randint(1, 2)):
            kind = pii_types[(j + m * 3) % len(pii_types)]
            inserts.append(_fill_template(rng.choice(PII_TEMPLATES[kind]), rng))
        for _, item in _plant(doc, inserts, rng):
            pii_items.append({"doc_id": doc.id, **item})
        doc.metadata["injection"] = {"kind": "planted", "pii": sum(len(items) for _, items in inserts)}
    truth["pii"] = pii_items

    # Other languages: short paragraphs, domain web.
    langs = []
    for k, (lang, url, text) in enumerate(LANGUAGE_DOCS):
        doc = Doc(f"web-lang-{k:06d}", text, url, "web",
                  {"source": "inline", "path": "curation/demo_corpus.py", "license": "CC0-1.0", "topic": f"lang/{lang}",
                   "injection": {"kind": "language", "lang": lang}})
        new.append(doc)
        langs.append({"id": doc.id, "lang": lang})
    truth["languages"] = langs
    return base + new, truth


# ----------------------------------------------------------------------------- writing

def _exact_groups(docs: list[Doc]) -> list[list[str]]:
    by_hash: dict[bytes, list[str]] = {}
    for d in docs:
        by_hash.setdefault(hashlib.sha256(d.text.encode()).digest(), []).append(d.id)
    return sorted(sorted(ids) for ids in by_hash.values() if len(ids) > 1)


def _write_gzip(path: Path, data: bytes) -> None:
    # mtime=0 and no file name in the header: equal content gives equal files.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        gz.write(data)


def _write_domain(corpus_dir: Path, domain: str, docs: list[Doc]) -> list[str]:
    files, lines, size = [], [], 0

    def flush() -> None:
        name = f"{domain}-{len(files):05d}.jsonl.gz"
        _write_gzip(corpus_dir / name, "".join(lines).encode())
        files.append(name)

    for d in docs:
        nbytes = len(d.text.encode())
        if lines and size + nbytes > MAX_FILE_TEXT_BYTES:
            flush()
            lines, size = [], 0
        lines.append(json.dumps(d.record(), ensure_ascii=False) + "\n")
        size += nbytes
    if lines:
        flush()
    return files


def build_demo_corpus(out_dir: str | Path, seed: int = 0, min_bytes: int = 20_000_000,
                      max_docs_per_source: int | None = None) -> dict[str, Any]:
    """Build the corpus and truth.json under `out_dir`; returns the summary.

    `max_docs_per_source` caps every source (primary and top-up) for small, fast builds.
    Earlier `*.jsonl.gz` files in `out_dir/corpus` are removed: the folder is this builder's.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    corpus_dir = out / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for old in corpus_dir.glob("*.jsonl.gz"):
        old.unlink()

    base: list[Doc] = []
    per_source: dict[str, dict[str, int]] = {}
    total = 0
    for src in PRIMARY_SOURCES + TOPUP_SOURCES:
        is_topup = src in TOPUP_SOURCES
        if is_topup and total >= min_bytes:
            break
        docs = _read_source(src, max_docs_per_source, min_bytes - total if is_topup else None)
        nbytes = sum(len(d.text.encode()) for d in docs)
        total += nbytes
        base.extend(docs)
        per_source[src.name] = {"documents": len(docs), "bytes": nbytes, "topup": int(is_topup)}

    docs, truth = _inject(base, seed)
    truth = {"seed": seed, "spans": "[start, end) offsets into text as a Python str (code points)",
             **truth, "exact_duplicate_groups": _exact_groups(docs)}

    order_rng = random.Random(f"{seed}:order")
    files: dict[str, list[str]] = {}
    documents: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    for domain in DOMAINS:
        mine = [d for d in docs if d.domain == domain]
        if not mine:
            continue
        order_rng.shuffle(mine)  # copies land away from their originals, in other files
        files[domain] = _write_domain(corpus_dir, domain, mine)
        documents[domain] = len(mine)
        nbytes[domain] = sum(len(d.text.encode()) for d in mine)
    (out / "truth.json").write_text(json.dumps(truth, ensure_ascii=False, indent=1, sort_keys=True) + "\n",
                                    encoding="utf-8")

    injections = {
        "near_duplicate_copies": sum(len(g["copies"]) for g in truth["near_duplicates"]),
        "url_variant_copies": sum(len(g["variants"]) for g in truth["url_variants"]),
        "not_duplicate_pairs": len(truth["not_duplicates"]),
        "repeated_sentence_occurrences": sum(len(s["occurrences"]) for s in truth["repeated_sentences"]),
        "pii_items": len(truth["pii"]),
        "language_docs": len(truth["languages"]),
    }
    return {
        "seed": seed,
        "documents": documents,
        "bytes": nbytes,
        "files": files,
        "sources": per_source,
        "injections": injections,
        "total_documents": len(docs),
        "total_bytes": sum(nbytes.values()),
        "seconds": round(time.perf_counter() - t0, 2),
    }


# ----------------------------------------------------------------------------- reference text

# Reference text for the perplexity stage's n-gram models (cc_net trains on Wikipedia): real
# text of each domain's kind from sources the corpus does not read (unless the corpus needed
# its top-up sources on a small machine: then the two overlap, which the summary reports).
REFERENCE_SOURCES = (
    _Source("debreadme", "web", _debian_readmes),
    _Source("docstrings", "books", _stdlib_docstrings),
    _Source("sitepackages", "code", _site_package_code),
)


def build_reference_texts(out_dir: str | Path, max_bytes_per_domain: int = 3_000_000) -> dict[str, Any]:
    """Write `out_dir/reference/<domain>.jsonl` (one `{"text": ...}` a line) for LM training."""
    ref_dir = Path(out_dir) / "reference"
    ref_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    for src in REFERENCE_SOURCES:
        docs = _read_source(src, None, max_bytes_per_domain)
        path = ref_dir / f"{src.domain}.jsonl"
        path.write_text("".join(json.dumps({"text": d.text}, ensure_ascii=False) + "\n" for d in docs),
                        encoding="utf-8")
        summary[src.domain] = {"source": src.name, "documents": len(docs), "path": str(path),
                               "bytes": sum(len(d.text.encode()) for d in docs)}
    return summary
