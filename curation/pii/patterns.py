"""Pattern PII (emails, phones, cards, IPs, IBANs, SSNs, credentials, keys, crypto) on Presidio's
recognizers, run only where a pattern can match.

Presidio's `AnalyzerEngine.analyze` runs every recognizer over the whole text, and needs spaCy's
tokens for its context words. Most text holds no pattern PII at all, so here one cheap scan
finds *trigger* regions -- a run of digits, an `@`, two colons, a vendor key prefix, a crypto
address shape -- and the same recognizers run on those regions alone, each padded with the
words before it that Presidio's context enhancer reads (it looks 5 tokens back) and snapped
to whitespace. Every recognizer's pattern contains its trigger (tested), so the regions find
what a whole-text pass finds, at a fraction of the cost on prose and code. On each region only
the recognizers whose *cue* it holds run (`routed`): `@` calls the e-mail and credential
recognizers, a digit run the phone, card, SSN and IP ones, and so on.

Offline by construction: the email recognizer validates domains with a tldextract extractor
that reads the Public Suffix List snapshot bundled with tldextract (the stock one fetches it).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from types import SimpleNamespace

import phonenumbers
import tldextract
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer
from presidio_analyzer.predefined_recognizers import (
    CryptoRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UsSsnRecognizer,
)

from curation.pii import OUR_TYPE
from curation.pii.spans import snap_to_words

# What every pattern below needs somewhere in its match.
_DIGIT_RUN_PATTERN = r"\d[\d \t\-.()/]{4,}\d"
_DIGIT_RUN = re.compile(_DIGIT_RUN_PATTERN)
_VENDOR_PREFIX = r"\b(?:AKIA|ASIA|gh[pousr]_|xox[abprs]-|[sr]k_(?:live|test)_)"
# NOTE: the look-ahead on the first characters any trigger can start with spares trying five
# alternatives (two with a word boundary) at each position of prose; the possessive hex runs
# never backtrack. Half the cost of the scan, the same matches (tested).
_TRIGGERS = re.compile(
    r"(?=[\dA-Fa-f:@gxsr])(?:"
    + _DIGIT_RUN_PATTERN  # phones, cards, SSNs, IBANs (their digits), IPv4
    + r"|[0-9A-Fa-f]*+:[0-9A-Fa-f]*+:"  # IPv6
    r"|@"  # emails, scheme://user:password@host
    + r"|" + _VENDOR_PREFIX  # vendor API keys
    + r"|\b(?:[13][a-km-zA-HJ-NP-Z1-9]{25,34}|bc1[a-z0-9]{20,}|0x[0-9a-fA-F]{40})\b"  # crypto addresses
    + r")"
)
# What every match of an entity's recognizers holds (a part or a superset of a prefix of their
# patterns, tested): a region runs only the recognizers whose cue it holds. Searched in the region
# on its own, not read off `_TRIGGERS`, whose alternation can hide one trigger inside another's
# match. Crypto and IBAN cues are broader than their triggers (case, no word boundary), so routing
# drops no match that running every recognizer on the region would find.
_CUES: dict[str, re.Pattern] = {
    "EMAIL": re.compile("@"),
    "CREDENTIAL": re.compile("@"),
    "PHONE": _DIGIT_RUN,  # the recognizer reads digit runs only
    "CREDIT_CARD": _DIGIT_RUN,  # 12-19 digits with single spaces or dashes
    "SSN": _DIGIT_RUN,  # 9 digits with - . or space
    "IP": re.compile(_DIGIT_RUN_PATTERN + r"|:[0-9A-Fa-f]*:"),  # d.d.d.d, or two colons of IPv6
    "IBAN": re.compile(r"[a-z]{2}\d{2}", re.IGNORECASE),  # the country code and check digits
    "API_KEY": re.compile(_VENDOR_PREFIX),
    "CRYPTO": re.compile(r"(?:bc1|[13])[a-z0-9]{25}|0x[0-9a-f]{40}", re.IGNORECASE),
}
# Padding of a region: Presidio's context enhancer reads up to 5 tokens before a match.
CONTEXT_BEFORE = 80
CONTEXT_AFTER = 24


def trigger_regions(text: str) -> list[tuple[int, int]]:
    """Sorted, disjoint [start, end) regions of `text` that may hold pattern PII."""
    regions: list[tuple[int, int]] = []
    for m in _TRIGGERS.finditer(text):
        start, end = snap_to_words(text, m.start() - CONTEXT_BEFORE, m.end() + CONTEXT_AFTER)
        if regions and start <= regions[-1][1]:
            regions[-1] = (regions[-1][0], max(end, regions[-1][1]))
        else:
            regions.append((start, end))
    return regions


def cue(recognizer: EntityRecognizer) -> re.Pattern:
    """What a text must hold for `recognizer` to find anything in it."""
    return _CUES[OUR_TYPE[recognizer.supported_entities[0]]]


def routed(piece: str, routes: Sequence[tuple[re.Pattern, EntityRecognizer]]) -> list[EntityRecognizer]:
    """The recognizers of `routes` (cue, recognizer) whose cue `piece` holds, in their order.

    NOTE: most regions hold one kind of trigger (a date, a version, an address): running only
    its recognizers spares Presidio's per-recognizer work on the rest. Cues are shared (digit
    runs), so each is searched once."""
    seen: dict[re.Pattern, bool] = {}
    out = []
    for c, recognizer in routes:
        hit = seen.get(c)
        if hit is None:
            hit = seen[c] = c.search(piece) is not None
        if hit:
            out.append(recognizer)
    return out


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's email recognizer, validating the domain against the bundled suffix list."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # suffix_list_urls=() -> tldextract's snapshot; cache_dir=None -> nothing written.
        self._extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    def validate_result(self, pattern_text: str) -> bool:
        return self._extract(pattern_text).fqdn != ""


# Issuer prefixes and lengths of the card networks (ISO/IEC 7812 IINs as the networks publish
# them). Presidio's pattern knows prefixes 1, 3, 4, 5[0-5] and 6 with 13-17 digits: it misses
# Mastercard's 2-series, Mir, 18-19 digit Visa/UnionPay/Maestro and 12-digit Maestro.
_CARD_NETWORKS: tuple[tuple[str, tuple[int, ...]], ...] = (
    (r"4", (13, 16, 19)),  # Visa
    (r"5[1-5]|222[1-9]|22[3-9]\d|2[3-6]\d\d|27[01]\d|2720", (16,)),  # Mastercard
    (r"3[47]", (15,)),  # American Express
    (r"6011|64[4-9]|65", (16, 17, 18, 19)),  # Discover
    (r"30[0-5]|3095|36|38|39", (14, 15, 16, 17, 18, 19)),  # Diners Club
    (r"35(?:2[89]|[3-8]\d)", (16, 17, 18, 19)),  # JCB
    (r"62|81", (16, 17, 18, 19)),  # UnionPay
    (r"50|5[6-8]|6\d", tuple(range(12, 20))),  # Maestro
    (r"220[0-4]", (16, 17, 18, 19)),  # Mir
)
_CARD_PREFIX = [(re.compile(prefix), lengths) for prefix, lengths in _CARD_NETWORKS]


def card_number_valid(digits: str) -> bool:
    """A known network's prefix and length, and the Luhn checksum."""
    if not digits.isdigit() or not any(p.match(digits) and len(digits) in lengths for p, lengths in _CARD_PREFIX):
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class CardRecognizer(PatternRecognizer):
    """12-19 digits, optionally in groups separated by single spaces or dashes, that pass
    `card_number_valid`; scored 1.0 when valid, like Presidio's checksum recognizers."""

    CONTEXT = ["credit", "card", "visa", "mastercard", "cc", "amex", "discover", "jcb", "diners", "maestro",
               "unionpay", "payment"]

    def __init__(self):
        super().__init__(supported_entity="CREDIT_CARD", name="CardRecognizer", context=self.CONTEXT,
                         patterns=[Pattern("card number", r"(?<![\d\-])\d(?:[ \-]?\d){11,18}(?![\d\-])", 0.3)])

    def validate_result(self, pattern_text: str) -> bool:
        return card_number_valid(EntityRecognizer.sanitize_value(pattern_text, [("-", ""), (" ", "")]))


# Dates, year ranges ("Copyright 1991-2021", the commonest digit run in licences) and decimals
# are no phone numbers, though some region's numbering plan accepts their digits.
_NOT_A_PHONE = re.compile(r"\d{1,2}[./]\d{1,2}[./]\d{2,4}|\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4}"
                          r"|(?<!\d)(?:1[89]|20)\d\d ?[-–,] ?(?:1[89]|20)\d\d(?!\d)"
                          r"|(?<![\d.])\d+\.\d+(?![\d.])")
_MIN_NATIONAL_DIGITS = 7
_MAX_RUN_DIGITS = 40  # two or three numbers in a row ("+1 212 555 0147 / 0148") still pass


class RegionalPhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer over many regions, without their false alarms.

    - A bare run of digits ("536228714") that only a region outside Presidio's own default list
      accepts scores below the default threshold: with many regions some numbering plan
      accepts most 9-11 digit runs (order numbers, ids), so it needs a context word ("phone",
      "call", ...), which raises it by Presidio's context factor. In Presidio's regions, or
      written like a phone number, it scores Presidio's 0.4 as before.
    - Dates, time zone offsets and numbers of fewer than 7 digits without a + are not phones.
    """

    PRIMARY_REGIONS = frozenset(PhoneRecognizer.DEFAULT_SUPPORTED_REGIONS)
    UNFORMATTED_SCORE = 0.3

    def analyze(self, text, entities, nlp_artifacts=None):
        # NOTE: `PhoneNumberMatcher` costs ~0.1 ms a character per region. It runs here on
        # each run of digits (plus the "+" or "(" before it), primary regions first; a run that
        # a primary region matched as a whole is not tried in the others, and answers are
        # cached by run (years, versions and table values repeat): ~10x less work than one pass
        # per region over the text, the same numbers found.
        results = []
        for run in _DIGIT_RUN.finditer(text):
            lo = max(0, run.start() - 2)
            for start, end, region, score in self._numbers(text[lo:run.end()], run.start() - lo):
                span = SimpleNamespace(start=lo + start, end=lo + end)  # what the result builder reads
                result = self._get_recognizer_result(span, text, region, nlp_artifacts)
                result.score = score
                results.append(result)
        return EntityRecognizer.remove_duplicates(results)

    @functools.lru_cache(maxsize=65_536)
    def _numbers(self, piece: str, run_start: int) -> tuple[tuple[int, int, str, float], ...]:
        """(start, end, region, score) of the phone numbers in `piece`, a run of digits."""
        # Blank what is no phone number, keeping offsets; a run left with too few or too many
        # digits for any number is skipped before the (costly) matcher sees it.
        piece = _NOT_A_PHONE.sub(lambda m: " " * len(m.group()), piece)
        run = piece[run_start:].strip()
        digits = sum(c.isdigit() for c in piece)
        if digits > _MAX_RUN_DIGITS or (digits < _MIN_NATIONAL_DIGITS and "+" not in piece):
            return ()
        # A bare run of digits outside Presidio's regions would score below the threshold
        # unless a context word lifts it: the other regions are tried for formatted numbers.
        regions = self._regions_bare if run.isdigit() else self._regions
        out = []
        for region in regions:
            covered = False
            for match in phonenumbers.PhoneNumberMatcher(piece, region, leniency=self.leniency):
                raw = match.raw_string
                if sum(c.isdigit() for c in raw) < _MIN_NATIONAL_DIGITS and "+" not in raw:
                    continue
                score = self.UNFORMATTED_SCORE if raw.isdigit() and region not in self.PRIMARY_REGIONS else self.SCORE
                out.append((match.start, match.end, region, score))
                covered = covered or (region in self.PRIMARY_REGIONS and match.start <= run_start and match.end >= len(piece))
            if covered:
                break
        return tuple(out)

    @functools.cached_property
    def _regions(self) -> list[str]:
        return sorted(self.supported_regions, key=lambda r: r not in self.PRIMARY_REGIONS)

    @functools.cached_property
    def _regions_bare(self) -> list[str]:
        return [r for r in self._regions if r in self.PRIMARY_REGIONS]


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


# The flags Presidio's own registry gives its predefined recognizers (a recognizer built
# directly gets MULTILINE | DOTALL only: a lower-cased IBAN is then no IBAN at all).
PRESIDIO_REGEX_FLAGS = re.IGNORECASE | re.MULTILINE | re.DOTALL


def pattern_recognizers(entities: Sequence[str], phone_regions: Sequence[str]) -> list[EntityRecognizer]:
    """Presidio recognizers for the pattern entities among `entities` (our names), with the
    registry's flags (the vendor key formats stay case-sensitive)."""
    factories = {
        "EMAIL": lambda: [OfflineEmailRecognizer()],
        "PHONE": lambda: [RegionalPhoneRecognizer(supported_regions=tuple(phone_regions))],
        "CREDIT_CARD": lambda: [CardRecognizer()],
        "IP": lambda: [IpRecognizer()],
        "IBAN": lambda: [IbanRecognizer()],
        "SSN": lambda: [UsSsnRecognizer()],
        "CREDENTIAL": lambda: [_credential_recognizer()],
        "API_KEY": lambda: [_api_key_recognizer()],
        "CRYPTO": lambda: [CryptoRecognizer(), _ethereum_recognizer()],
    }
    recognizers = [r for e in entities if e in factories for r in factories[e]()]
    for r in recognizers:
        if isinstance(r, PatternRecognizer) and r.name != "ApiKeyRecognizer":
            r.global_regex_flags = PRESIDIO_REGEX_FLAGS
    return recognizers
