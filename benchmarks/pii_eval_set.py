"""Labelled PII evaluation sets from independent sources, for benchmarks/pii.py.

    .venv/bin/python benchmarks/pii_eval_set.py [--sets faker,nemo,real,demo] [--seed 0] [--limit N]
                                                [--out build/pii-eval.jsonl]

One JSON object a line: {"id", "text", "set", "entities": [{"type", "start", "end", "detail"}],
"ignore": [[start, end], ...], "meta": {...}}; types are ours (`curation.pii.ENTITIES`), offsets are
code points. `ignore` marks text whose PII status the set cannot vouch for: predictions there
count neither way and its words are not in "other words kept" (see curation/pii/evaluate.py).
`detail` is `key=value;...` (region, format, brand, country, locale) for per-group recall.

Sets (why several: each engine was tuned on someone's examples; agreement across sources is
what says a change helps):
- faker: Faker values in ~50 hand-written templates (letters, chats, forms, logs, CSV, bios,
  configs) across 25 locales, plus PII-free documents that are hard on purpose (capitalised
  common words, dates, versions, prices, ISBNs). 10% of the PII documents are lower-cased whole.
  Phones: Faker's per-locale numbers that `phonenumbers` accepts for that region, as Faker wrote
  them or re-formatted national/international/E.164; extensions ("x123") are cut off. Cards: every
  brand and length (Visa 13/16/19, Mastercard 2- and 5-series, Amex, Discover, Diners 14, JCB 15/16,
  UnionPay 16-19, Maestro 12-19), all Luhn-valid. IBANs of 18 countries, mod-97-valid.
  LOCATION is a town, state or country name only: a street address is not an entity Flywheel
  redacts, so street lines and postcodes are ignore regions (as are company names, which Faker
  builds from surnames, and user names). Towns come only from Faker locales whose city lists are
  real places (Faker's en_US "Lake Jamesberg" is not a place anyone lives).
- nemo: NVIDIA NeMo Curator's PII test lines (benchmarks/data/pii_nemo_lines.txt, Apache-2.0;
  its header says what was added). birth_date and address are ignore regions; the town inside
  each address is LOCATION.
- real: structured lines on this machine whose entities the format tells: Debian copyright
  fields (`Copyright: 2010 John Smith <john@example.org>`), Debian changelog trailers
  (` -- Name <email>  Mon, 01 Jan 2020 ...`) and Python METADATA author/maintainer headers, with
  PII-free structured lines of the same files (Files:, License:, package/version headers). A
  name that looks like an organisation or a handle is an ignore region, not a PERSON.
- demo: the PII planted in the demo corpus (build/demo-corpus/truth.json `pii`), scored in the
  planted sentences only; the rest of each document is real text with unlabelled entities, an
  ignore region. Skipped (with a message) when the corpus has not been built.

Everything is deterministic from the seed for a given Faker version and machine image.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import gzip
import hashlib
import ipaddress
import json
import os
import random
import re
import string
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NEMO_LINES = ROOT / "benchmarks" / "data" / "pii_nemo_lines.txt"
DEMO_DIR = ROOT / "build" / "demo-corpus"
SETS = ("faker", "nemo", "real", "demo")
DEFAULT_SIZE = {"faker": 600, "real": 500}

Doc = dict[str, Any]


# ----------------------------------------------------------------------------- shared


def _entity(type_: str, start: int, end: int, detail: str = "") -> dict[str, Any]:
    return {"type": type_, "start": start, "end": end, "detail": detail}


def validate(doc: Doc) -> None:
    """Spans inside the text, not crossing each other, not starting or ending in whitespace."""
    text = doc["text"]
    spans = sorted((e["start"], e["end"]) for e in doc["entities"])
    for (s, e), nxt in zip(spans, spans[1:] + [(len(text), len(text))]):
        assert 0 <= s < e <= len(text), (doc["id"], s, e)
        assert not text[s].isspace() and not text[e - 1].isspace(), (doc["id"], text[s:e])
        assert e <= nxt[0], (doc["id"], "overlapping gold spans", text[s:e])
    for s, e in doc["ignore"]:
        assert 0 <= s < e <= len(text), (doc["id"], s, e)


def luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _luhn_complete(payload: str) -> str:
    for d in "0123456789":
        if luhn_ok(payload + d):
            return payload + d
    raise AssertionError(payload)


def iban_ok(iban: str) -> bool:
    s = iban.replace(" ", "")
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def lower_keep_offsets(text: str) -> str:
    """Lower-case, except characters whose lower case is longer ('İ' -> 'i̇'): spans stay valid."""
    return "".join(low if len(low := c.lower()) == 1 else c for c in text)


# ----------------------------------------------------------------------------- faker

# locale -> region (phones, IBAN country); ja_JP names are romanised.
LOCALES = {
    "en_US": "US", "en_GB": "GB", "de_DE": "DE", "fr_FR": "FR", "es_ES": "ES", "it_IT": "IT", "nl_NL": "NL",
    "pt_BR": "BR", "en_IN": "IN", "en_AU": "AU", "pl_PL": "PL", "sv_SE": "SE", "ja_JP": "JP", "en_CA": "CA",
    "de_AT": "AT", "de_CH": "CH", "da_DK": "DK", "fi_FI": "FI", "no_NO": "NO", "cs_CZ": "CZ", "pt_PT": "PT",
    "en_IE": "IE", "tr_TR": "TR", "ro_RO": "RO", "hu_HU": "HU",
}
# Faker locales whose city() draws from real place names.
REAL_CITY_LOCALES = ("de_DE", "es_ES", "it_IT", "nl_NL", "en_IN", "pl_PL", "sv_SE", "de_AT", "de_CH", "da_DK",
                     "fi_FI", "cs_CZ", "pt_PT", "ro_RO")
# Faker locales whose iban() is of their own country.
IBAN_LOCALES = ("en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_BR", "pl_PL", "de_AT", "de_CH", "da_DK",
                "fi_FI", "no_NO", "cs_CZ", "pt_PT", "en_IE", "tr_TR", "ro_RO")

# Placeholders: {KIND}. Fixed template text holds no PII (a title like "Dr." is outside the span).
TEMPLATES: dict[str, str] = {
    "letter_order": "Dear {FIRST},\n\nThank you for your order of {DATE}. The invoice total is {PRICE}. If anything "
                    "is wrong, call us on {PHONE} or write to {EMAIL}.\n\nKind regards,\n{PERSON}",
    "letter_hr": "Dear Mr. {LAST},\n\nWe have received your application and will contact you at {EMAIL} within "
                 "{NUM} working days.\n\nYours sincerely,\n{PERSON}\nHuman Resources",
    "letter_reference": "To whom it may concern,\n\n{PERSON} worked with us from {DATE} to {DATE} as a data analyst. "
                        "I recommend {FIRST} without reservation. Feel free to phone me on {PHONE}.\n\n{PERSON}",
    "chat_number": "[{TIME}] {FIRST}: hey, can you send me the slides?\n[{TIME}] {FIRST}: sure, what's your "
                   "number again?\n[{TIME}] {FIRST}: {PHONE}\n[{TIME}] {FIRST}: thx",
    "chat_trip": "{FIRST}: are you coming to {CITY} next week?\n{FIRST}: yes, landing on {DATE}. text me at {PHONE}",
    "chat_card": "{FIRST}: can u pay for the tickets? my card is {CARD} exp {MMYY}\n{FIRST}: ok done",
    "form_contact": "Name: {PERSON}\nEmail: {EMAIL}\nPhone: {PHONE}\nCity: {CITY}\nCountry: {COUNTRY}",
    "form_identity": "Full name: {PERSON}\nDate of birth: {DATE}\nSSN: {SSN}\nAddress: {STREET}, {CITY} {POSTCODE}",
    "form_payment": "Cardholder: {PERSON}\nCard number: {CARD}\nExpiry: {MMYY}\nAmount: {PRICE}",
    "form_bank": "Beneficiary: {PERSON}\nIBAN: {IBAN}\nReference: INV-{NUM}\nDue: {DATE}",
    "log_auth": "{DATE} {TIME} INFO auth: login ok for user {USER} from {IPV4}\n"
                "{DATE} {TIME} INFO auth: session closed for user {USER}",
    "log_sshd": "{DATE} {TIME} host sshd[{NUM}]: Failed password for invalid user {USER} from {IPV4} port {NUM} ssh2",
    "log_access": "{IPV6} - - [{DATE}:{TIME}] \"GET /api/v2/items?page={NUM} HTTP/1.1\" 200 {NUM}",
    "log_mail": "{DATE} {TIME} postfix/smtp[{NUM}]: to=<{EMAIL}>, relay=mx.{DOMAIN}[{IPV4}]:25, status=sent",
    "csv_people": "id,name,email,phone\n{NUM},{PERSON},{EMAIL},{PHONE}\n{NUM},{PERSON},{EMAIL},{PHONE}",
    "csv_payout": "{PERSON};{CITY};{IBAN};{PRICE}\n{PERSON};{CITY};{IBAN};{PRICE}",
    "csv_cards": "customer,card,amount\n{PERSON},{CARD},{PRICE}\n{PERSON},{CARD},{PRICE}",
    "bio_engineer": "{PERSON} is a software engineer based in {CITY}. Before that, {FIRST} spent {NUM} years "
                    "working in {COUNTRY}.",
    "bio_born": "{PERSON} was born in {CITY} and studied chemistry. She now lives in {COUNTRY} with her two dogs.",
    "bio_short": "{PERSON} ({EMAIL}) maintains the scheduler and lives in {STATE}.",
    "names_bare": "{PERSON}, {PERSON}, {PERSON}",
    "names_lines": "{PERSON}\n{PERSON}\n{PERSON}\n{PERSON}",
    "names_line_start": "{FIRST} fixed the flaky test.\n{FIRST} reviewed it.\n{PERSON} merged it on {DATE}.",
    "name_alone_address": "{PERSON}\n{STREET}\n{POSTCODE} {CITY}\n{COUNTRY}",
    "wire": "Please wire {PRICE} to IBAN {IBAN} (account holder: {PERSON}) by {DATE}.",
    "ticket_card": "Ticket #{NUM} opened by {PERSON} ({EMAIL}). The customer reports that the card {CARD} "
                   "was charged twice.",
    "hr_ssn": "Employee {PERSON}, SSN {SSN}, starts on {DATE} in the {CITY} office.",
    "chat_ssn": "my social is {SSN} and my zip is {POSTCODE}, can you check my claim?",
    "ip_config": "server {IPV4}\nbackup {IPV4}\ngateway {IPV6}\ndns {IPV4}",
    "mail_header": "From: {PERSON} <{EMAIL}>\nTo: {PERSON} <{EMAIL}>\nSubject: Budget review on {DATE}",
    "git_log": "commit {HEX}\nAuthor: {PERSON} <{EMAIL}>\nDate: {DATE}\n\n    Fix typo in README (v{VERSION})",
    "signature": "--\n{PERSON}\n{COMPANY}\nTel: {PHONE}\nMail: {EMAIL}",
    "travel": "Flight to {CITY} booked for {FIRST} {LAST}; the hotel in {CITY} is confirmed. Call {PHONE_INTL} "
              "on arrival.",
    "review": "Stayed here with my husband {FIRST} for {NUM} nights. The staff in {CITY} were lovely, {NUM}/10.",
    "classified": "Selling my bike, {PRICE}. Pick-up in {CITY}. Contact {FIRST} at {PHONE} or {EMAIL}.",
    "meeting": "Attendees: {PERSON}, {PERSON}, {PERSON}\nAction: {FIRST} to send the budget by {DATE}.",
    "env_credentials": "DATABASE_URL=postgres://{CRED}/app\nREDIS_URL=redis://{CRED}:6379/0",
    "env_keys": "export AWS_ACCESS_KEY_ID={AWS_KEY}\nexport GITHUB_TOKEN={GH_TOKEN}\nexport STRIPE_KEY={STRIPE_KEY}",
    "donate": "Donations welcome: BTC {BTC} or ETH {ETH}. Thank you!",
    "emergency": "Emergency contact: {PERSON} ({PHONE}), {CITY}.",
    "invoice": "INVOICE {NUM}\nBill to: {PERSON}, {STREET}, {POSTCODE} {CITY}\nTotal due: {PRICE}\nPay to {IBAN}",
    "medical": "Patient {PERSON}, DOB {DATE}, was seen at the {CITY} clinic. Callback number {PHONE}.",
    "shipping": "Your parcel to {CITY}, {COUNTRY} has shipped. Questions? Reply to {EMAIL}.",
    "forum": "hi all, {FIRST} here from {CITY}. anyone know a good mechanic? pm me or call {PHONE}",
    "json": "{\"name\": \"{PERSON}\", \"email\": \"{EMAIL}\", \"ip\": \"{IPV4}\", \"card\": \"{CARD}\"}",
    "yaml": "owner: {PERSON}\ncontact: {EMAIL}\nlocation: {CITY}\nphone: \"{PHONE_INTL}\"",
    "phone_list": "{CITY} office: {PHONE}\n{CITY} office: {PHONE_INTL}\nHotline: {PHONE}",
    "wedding": "{PERSON} and {PERSON} invite you to celebrate their wedding in {CITY} on {DATE}.",
    "obituary": "{PERSON}, {AGE}, of {CITY}, passed away peacefully on {DATE}.",
    "recipients": "- {PERSON} <{EMAIL}>\n- {PERSON} <{EMAIL}>\n- {PERSON} <{EMAIL}>",
    "whatsapp": "WhatsApp: {PHONE_INTL}\nSignal: {PHONE}",
    "calendar": "{DATE} {TIME} call with {PERSON} ({PHONE_INTL})\n{DATE} {TIME} dentist",
    "tweet": "@{USER} thanks {FIRST}! see you in {COUNTRY} next month",
    "card_sentence": "Charge {PRICE} to {CARD}, please, and send the receipt to {EMAIL}.",
    "card_list": "Cards on file:\n{CARD}\n{CARD}\n{CARD}",
    "order_paid": "Order {BIGNUM} was paid by {FIRST} {LAST} with card {CARD} on {DATE}.",
    "sms_code": "{FIRST}, your verification code is {NUM}. If this wasn't you, call {PHONE}.",
}

# PII-free documents; every word is scored for "other words kept".
NEGATIVE_TEMPLATES: dict[str, str] = {
    "neg_report": "The quarterly report for Q{Q} shows revenue of {PRICE}, up {PERCENT} from last year. "
                  "The Board approved the Annual Budget on {DATE}.",
    "neg_release": "Version {VERSION} was released on {DATE} and fixes {NUM} bugs in the Parser and the Scheduler.",
    "neg_isbn": "ISBN {ISBN}. Second Edition, Chapter {NUM}: Introduction to Thermodynamics. Printed {YEAR}.",
    "neg_order": "Order Summary\nItems: {NUM}\nSubtotal: {PRICE}\nShipping: Free\nTotal: {PRICE}\nOrder No. {BIGNUM}",
    "neg_meeting": "Monday's Meeting was moved to Tuesday at {TIME} in Room {NUM}. Bring the Q{Q} Figures.",
    "neg_build": "Run `pip install package=={VERSION}` and restart the Server; build {HEX} passed {NUM} of "
                 "{NUM} tests.",
    "neg_stats": "Table {NUM} lists {BIGNUM} samples; the mean was {FLOAT} with a standard deviation of {FLOAT}.",
    "neg_novel": "Chapter {NUM}\n\nThe Rain fell all Night, and the River rose by {NUM} centimetres before Dawn. "
                 "Nobody in the Village slept.",
    "neg_error": "Error {NUM}: Connection Timeout after {NUM} ms (retry {NUM}/{NUM}). Next attempt at {TIME}.",
    "neg_requirements": "Python {VERSION}, NumPy {VERSION} and the Linux kernel {VERSION} or newer are required.",
    "neg_sale": "The Summer Sale ends {DATE}: save {PERCENT} on all Garden Furniture, from {PRICE}.",
    "neg_reference": "Reference number {NUM4}-{NUM4}; please quote it in all Correspondence about Invoice {BIGNUM}.",
    "neg_weather": "Temperature: {NUM} °C\nHumidity: {PERCENT}\nWind: {NUM} km/h NE\nUpdated {DATE} {TIME}",
    "neg_schedule": "Week {NUM} Schedule: Mathematics, History, Biology and Art. Exams start on {DATE}.",
    "neg_prose": "Most of the changes were small, but a few of them will need more testing. It rained for most of "
                 "the day, so the outdoor events were cancelled. Prices went up {PERCENT} in the third quarter.",
    "neg_recipe": "Preheat the Oven to {NUM} degrees. Mix {NUM} g of Flour with {NUM} Eggs and bake for {NUM} minutes.",
    "neg_legal": "Section {NUM}.{NUM} of the Agreement, dated {DATE}, applies to Orders above {PRICE}.",
    "neg_hardware": "Model X{NUM} Pro, Serial {HEX}, Firmware {VERSION}; Warranty until {DATE}.",
}

_FIELD = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# (brand, prefixes, lengths) for the cards Faker does not make at every length.
_OWN_CARDS = (("maestro", ("5018", "5020", "5038", "5893", "6304", "6759", "6761", "6763"), range(12, 20)),
              ("unionpay", ("62",), range(16, 20)))
_FAKER_CARDS = ("visa13", "visa16", "visa19", "mastercard", "amex", "discover", "diners", "jcb15", "jcb16")


class _FakerSet:
    """Draws values for placeholders; one Faker per locale, each seeded from the set's seed."""

    def __init__(self, seed: int):
        from faker import Faker

        self.rng = random.Random(f"{seed}:pii-faker")
        self.fakers = {}
        for loc in LOCALES:
            f = Faker(loc)
            f.seed_instance(int(hashlib.sha256(f"{seed}:{loc}".encode()).hexdigest()[:8], 16))
            for provider in f.get_providers():
                # it_IT builds its city list from a set: its order would follow PYTHONHASHSEED.
                if isinstance(getattr(provider, "cities", None), list):
                    provider.cities = sorted(provider.cities)
            self.fakers[loc] = f
        self.en = self.fakers["en_US"]
        self.locale = "en_US"

    # -- values: (text, type or None, detail, ignore?) ------------------------------------
    def value(self, kind: str) -> tuple[str, str | None, str, bool]:
        f, loc, rng = self.fakers[self.locale], self.locale, self.rng
        if kind in ("PERSON", "FIRST", "LAST"):
            first, last = (f.first_romanized_name(), f.last_romanized_name()) if loc == "ja_JP" else \
                (f.first_name(), f.last_name())
            text = {"PERSON": f"{first} {last}", "FIRST": first, "LAST": last}[kind]
            return text, "PERSON", f"locale={loc};part={kind.lower()}", False
        if kind == "EMAIL":
            return rng.choice((f.email, f.free_email, f.company_email))(), "EMAIL", f"locale={loc}", False
        if kind in ("PHONE", "PHONE_INTL"):
            return self.phone(international=kind == "PHONE_INTL")
        if kind == "CARD":
            return self.card()
        if kind == "SSN":
            ssn = self.en.ssn()
            fmt = rng.choices(("dashes", "spaces", "plain"), (70, 15, 15))[0]
            ssn = {"dashes": ssn, "spaces": ssn.replace("-", " "), "plain": ssn.replace("-", "")}[fmt]
            return ssn, "SSN", f"format={fmt}", False
        if kind == "IPV4":
            ip = f.ipv4_private() if rng.random() < 0.3 else f.ipv4_public()
            return ip, "IP", "version=4", False
        if kind == "IPV6":
            ip = f.ipv6()
            compressed = rng.random() < 0.5
            return (ipaddress.IPv6Address(ip).compressed if compressed else ip), "IP", \
                f"version=6;form={'compressed' if compressed else 'full'}", False
        if kind == "IBAN":
            country = rng.choice(IBAN_LOCALES)
            iban = self.fakers[country].iban()
            assert iban_ok(iban) and iban[:2] == LOCALES[country], iban
            grouped = rng.random() < 0.5
            if grouped:
                iban = " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))
            return iban, "IBAN", f"country={iban[:2]};form={'grouped' if grouped else 'compact'}", False
        if kind == "CITY":
            src = loc if loc in REAL_CITY_LOCALES else rng.choice(REAL_CITY_LOCALES)
            return self.fakers[src].city(), "LOCATION", f"kind=city;locale={src}", False
        if kind == "COUNTRY":
            return self.en.country(), "LOCATION", "kind=country", False
        if kind == "STATE":
            return self.en.state(), "LOCATION", "kind=state", False
        if kind == "CRED":
            cred = f"{self.en.user_name()}:{self.en.password(length=rng.randint(8, 16), special_chars=False)}" \
                   f"@{self.en.domain_name()}"
            return cred, "CREDENTIAL", "", False
        if kind == "AWS_KEY":
            return "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16)), \
                "API_KEY", "vendor=aws", False
        if kind == "GH_TOKEN":
            return "ghp_" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(36)), \
                "API_KEY", "vendor=github", False
        if kind == "STRIPE_KEY":
            return "sk_live_" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(24)), \
                "API_KEY", "vendor=stripe", False
        if kind == "BTC":
            return self.bitcoin(), "CRYPTO", "coin=bitcoin", False
        if kind == "ETH":
            return "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(40)), "CRYPTO", "coin=ethereum", False
        # Ignore regions: PII-ish, but not an entity Flywheel redacts, or not reliably one.
        if kind == "STREET":
            return f.street_address().replace("\n", ", "), None, "street", True
        if kind == "POSTCODE":
            return f.postcode(), None, "postcode", True
        if kind == "COMPANY":
            return f.company(), None, "company", True
        if kind == "USER":
            return self.en.user_name(), None, "user", True
        return self.filler(kind), None, "", False

    def filler(self, kind: str) -> str:
        """Non-PII values that look like numbers, dates and codes: they must stay."""
        f, rng = self.en, self.rng
        # Dates and times from our rng: Faker's are drawn up to "now", which moves.
        if kind == "DATE":
            day = datetime.date(1950, 1, 1) + datetime.timedelta(days=rng.randrange(27_000))
            return day.strftime(rng.choice(("%Y-%m-%d", "%d/%m/%Y", "%B %d, %Y", "%d %b %Y", "%m/%d/%Y", "%d.%m.%Y")))
        if kind == "TIME":
            return f"{rng.randrange(24):02d}:{rng.randrange(60):02d}"
        if kind == "YEAR":
            return str(rng.randint(1950, 2025))
        if kind == "AGE":
            return str(rng.randint(60, 99))
        if kind in ("NUM", "Q"):
            return str(rng.randint(1, 4) if kind == "Q" else rng.choice((rng.randint(1, 99), rng.randint(100, 9999))))
        if kind == "NUM4":
            return f"{rng.randint(1000, 9999)}"
        if kind == "BIGNUM":
            return str(rng.randint(10_000, 9_999_999))
        if kind == "FLOAT":
            return f"{rng.uniform(0, 100):.2f}"
        if kind == "PERCENT":
            return f"{rng.uniform(0.5, 60):.1f}%"
        if kind == "PRICE":
            amount = rng.uniform(1, 5000)
            return rng.choice((f"${amount:,.2f}", f"€{amount:.0f}", f"£{amount:.2f}", f"{amount:.2f} EUR"))
        if kind == "VERSION":
            return f"{rng.randint(0, 12)}.{rng.randint(0, 30)}.{rng.randint(0, 20)}"
        if kind == "ISBN":
            return rng.choice((f.isbn13, f.isbn10))()
        if kind == "HEX":
            return "".join(rng.choice("0123456789abcdef") for _ in range(rng.choice((7, 12, 40))))
        if kind == "MMYY":
            return f"{rng.randint(1, 12):02d}/{rng.randint(25, 32)}"
        if kind == "DOMAIN":
            return f.domain_name()
        raise KeyError(f"unknown placeholder {kind}")

    def phone(self, international: bool) -> tuple[str, str, str, bool]:
        """A Faker number of the doc's locale (or any locale) that phonenumbers accepts for its region."""
        import phonenumbers

        rng = self.rng
        locales = [self.locale] + rng.sample(list(LOCALES), len(LOCALES))
        for loc in locales:
            region = LOCALES[loc]
            for _ in range(8):
                raw = re.sub(r"\s*(?:x|ext\.?)\s*\d+$", "", self.fakers[loc].phone_number())
                try:
                    num = phonenumbers.parse(raw, region)
                except phonenumbers.NumberParseException:
                    continue
                valid = phonenumbers.is_valid_number(num)
                if not (valid or phonenumbers.is_possible_number(num)):
                    continue
                fmt = rng.choices(("faker", "national", "international", "e164"), (50, 20, 20, 10))[0]
                if international:
                    fmt = rng.choice(("international", "e164"))
                if fmt != "faker" and not valid:
                    fmt = "faker"  # re-formatting needs a number phonenumbers knows is real
                if international and fmt == "faker" and not raw.startswith(("+", "00")):
                    continue
                text = raw if fmt == "faker" else phonenumbers.format_number(num, {
                    "national": phonenumbers.PhoneNumberFormat.NATIONAL,
                    "international": phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                    "e164": phonenumbers.PhoneNumberFormat.E164}[fmt])
                if fmt == "faker":
                    fmt = "faker-international" if raw.startswith(("+", "00")) else "faker-national"
                return text, "PHONE", f"region={region};format={fmt}", False
        raise AssertionError("no phone number")

    def card(self) -> tuple[str, str, str, bool]:
        rng = self.rng
        pick = rng.randrange(len(_FAKER_CARDS) + len(_OWN_CARDS) * 2)
        if pick < len(_FAKER_CARDS):
            kind = _FAKER_CARDS[pick]
            number = self.en.credit_card_number(kind)
            brand = re.sub(r"\d+$", "", kind)
            if brand == "mastercard":
                brand += "-2series" if number[0] == "2" else "-5series"
        else:
            brand, prefixes, lengths = _OWN_CARDS[(pick - len(_FAKER_CARDS)) % len(_OWN_CARDS)]
            prefix, length = rng.choice(prefixes), rng.choice(lengths)
            body = "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
            number = _luhn_complete(prefix + body)
        assert luhn_ok(number), number
        n = len(number)
        # As printed: Amex 4-6-5, Diners 4-6-4, Visa-13 4-4-5, 19 digits 4-4-4-4-3, else fours (17/18: 4-4-4-5/6).
        groups = {15: (4, 6, 5), 14: (4, 6, 4), 13: (4, 4, 5), 17: (4, 4, 4, 5), 18: (4, 4, 4, 6),
                  19: (4, 4, 4, 4, 3)}.get(n) or (4,) * (n // 4)
        assert sum(groups) == n, (n, groups)
        sep = rng.choice(("", " ", " ", "-"))
        parts, pos = [], 0
        for g in groups:
            parts.append(number[pos:pos + g])
            pos += g
        sep_name = {"": "none", " ": "space", "-": "dash"}[sep]
        return sep.join(parts), "CREDIT_CARD", f"brand={brand};length={n};sep={sep_name}", False

    def bitcoin(self) -> str:
        """A P2PKH address with a valid base58check checksum (Presidio validates it)."""
        payload = b"\x00" + bytes(self.rng.getrandbits(8) for _ in range(20))
        data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
        n, out = int.from_bytes(data, "big"), ""
        while n:
            n, r = divmod(n, 58)
            out = _B58[r] + out
        return "1" * (len(data) - len(data.lstrip(b"\x00"))) + out

    # -- documents -----------------------------------------------------------------------
    def fill(self, template: str) -> tuple[str, list[dict], list[list[int]]]:
        out, ents, ignore, pos, length = [], [], [], 0, 0
        for m in _FIELD.finditer(template):
            out.append(template[pos:m.start()])
            length += m.start() - pos
            text, type_, detail, is_ignore = self.value(m.group(1))
            if type_:
                ents.append(_entity(type_, length, length + len(text), detail))
            elif is_ignore:
                ignore.append([length, length + len(text)])
            out.append(text)
            length += len(text)
            pos = m.end()
        out.append(template[pos:])
        return "".join(out), ents, ignore


def build_faker(n: int = DEFAULT_SIZE["faker"], seed: int = 0) -> list[Doc]:
    """`n` documents: 15% PII-free, the rest from one or two templates; 10% lower-cased."""
    gen = _FakerSet(seed)
    rng = random.Random(f"{seed}:pii-faker-docs")
    names, negs = sorted(TEMPLATES), sorted(NEGATIVE_TEMPLATES)
    docs = []
    for i in range(n):
        gen.locale = rng.choice(list(LOCALES))
        negative = rng.random() < 0.15
        pool = negs if negative else names
        chosen = [rng.choice(pool) for _ in range(2 if rng.random() < 0.25 else 1)]
        text, ents, ignore = "", [], []
        for name in chosen:
            part, e, ig = gen.fill((NEGATIVE_TEMPLATES if negative else TEMPLATES)[name])
            off = len(text) + (2 if text else 0)
            text = f"{text}\n\n{part}" if text else part
            ents += [{**x, "start": x["start"] + off, "end": x["end"] + off} for x in e]
            ignore += [[s + off, e_ + off] for s, e_ in ig]
        # Case-sensitive secrets (keys, wallets, passwords) are not lower-cased: that would unmake them.
        lowered = (not negative and rng.random() < 0.10
                   and not any(e["type"] in ("API_KEY", "CRYPTO", "CREDENTIAL") for e in ents))
        if lowered:
            text = lower_keep_offsets(text)
        docs.append({"id": f"faker-{i:05d}", "text": text, "set": "faker", "entities": ents, "ignore": ignore,
                     "meta": {"templates": chosen, "locale": gen.locale, "lowercased": lowered}})
    return docs


# ----------------------------------------------------------------------------- nemo

NEMO_TAGS = {"name": "PERSON", "email": "EMAIL", "phone_number": "PHONE", "ssn": "SSN",
             "credit_card_number": "CREDIT_CARD", "ip_address": "IP", "city": "LOCATION",
             "birth_date": None, "address": None, "ignore": None}  # None: ignore region
_TAG = re.compile(r"<(/?)([a-z_]+)>")


def parse_tagged(line: str, tags: dict[str, str | None]) -> tuple[str, list[dict], list[list[int]]]:
    """`I am <name>Jo</name>` -> ("I am Jo", [PERSON 5-7], []); tags nest (a city in an address)."""
    out, ents, ignore, stack, pos, length = [], [], [], [], 0, 0
    for m in _TAG.finditer(line):
        if m.group(2) not in tags:
            continue
        out.append(line[pos:m.start()])
        length += m.start() - pos
        pos = m.end()
        if not m.group(1):
            stack.append((m.group(2), length))
            continue
        tag, start = stack.pop()
        assert tag == m.group(2), line
        if tags[tag]:
            ents.append(_entity(tags[tag], start, length, f"tag={tag}"))
        else:
            ignore.append([start, length])
    assert not stack, line
    out.append(line[pos:])
    return "".join(out), ents, ignore


def build_nemo(path: Path = NEMO_LINES) -> list[Doc]:
    docs, source = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# file:"):
            source = line[len("# file:"):].strip()
        if not line.strip() or line.startswith("#"):
            continue
        text, ents, ignore = parse_tagged(line, NEMO_TAGS)
        docs.append({"id": f"nemo-{len(docs):05d}", "text": text, "set": "nemo", "entities": ents, "ignore": ignore,
                     "meta": {"source": source}})
    return docs


# ----------------------------------------------------------------------------- real

_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
_YEARS = r"(?:\d{4}(?:\s*[-–]\s*\d{2,4})?(?:\s*,\s*\d{4}(?:\s*[-–]\s*\d{2,4})?)*,?\s+)"
# "Copyright: 2010-2012 Name <email>", continuation "           1995 Name <email>", "Maintainer: ...".
_COPYRIGHT_LINE = re.compile(
    rf"^(?P<pre>\s*(?:(?:Copyright|Upstream-Contact|Maintainer)\s*:?\s*)?(?:(?:\([cC]\)|©)\s*)?{_YEARS}?)"
    rf"(?P<name>[^\s<>\d@,;:()][^<>\d@,;:()]*?)\s*<(?P<email>{_EMAIL})>\s*$")
_CHANGELOG_TRAILER = re.compile(
    rf"^ -- (?P<name>[^<>]+?) <(?P<email>{_EMAIL})>  (?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{{1,2}} [A-Z][a-z]{{2}} "
    r"\d{4} \d\d:\d\d:\d\d [+-]\d{4}\s*$")
_CHANGELOG_HEADER = re.compile(r"^[a-z0-9][a-z0-9.+-]+ \([^()\s]+\) [a-z0-9 /.-]+; urgency=\w+$")
# Lines of the same files that hold no PII by their format.
_SAFE_DEB = re.compile(r"^(?:Files: [^\s].*|License: [A-Za-z0-9.+-]+(?: (?:or|and|with) [A-Za-z0-9.+-]+)*|"
                       r"Format: https?://\S+)$")
_SAFE_META = re.compile(r"^(?:Metadata-Version|Version|Requires-Python|License-Expression|License): [^\s].{0,60}$")
_META_PERSON = re.compile(r"^(?P<key>Author|Maintainer): (?P<name>[^<>@\n]+?)\s*$")
_META_EMAILS = re.compile(r"^(?P<key>Author-email|Maintainer-email): (?P<value>.+?)\s*$")
_META_ITEM = re.compile(rf'\s*(?:"?(?P<name>[^<>",]+?)"?\s*)?<(?P<email>{_EMAIL})>\s*|\s*(?P<bare>{_EMAIL})\s*')

_ORG_WORDS = frozenset("""inc inc. ltd ltd. llc gmbh corp corp. corporation co co. company foundation project team teams
developers developer maintainers contributors authors community group software systems technologies labs lab
university institute society association consortium organization organisation janitor bot robot archive packaging
authority development debian ubuntu python google microsoft mozilla apache gnome kde red hat canonical the support
admin administrator release qa server services center centre council committee trust network networks security
and others et al various free public interest mailing list kernel""".split())
_PARTICLES = frozenset("van von der den de del della da di du la le bin ibn al el dos das ter ten zu y".split())


def is_person_name(name: str) -> bool:
    """2-5 capitalised words (name particles allowed), no organisation word, no digits or '@'."""
    words = name.replace(",", " ").split()
    if not 2 <= len(words) <= 5 or re.search(r"[\d@_/()\[\]\"]", name):
        return False
    if any(w.lower().strip(".") in _ORG_WORDS or w.lower() in _ORG_WORDS for w in words):
        return False
    caps = [w for w in words if w.lower() not in _PARTICLES]
    return len(caps) >= 2 and all(w[0].isupper() and (len(w) > 1 and any(c.islower() for c in w) or
                                                       re.fullmatch(r"[A-Z]\.", w)) for w in caps)


def _name_email_line(line: str, name: tuple[int, int], email: tuple[int, int], source: str) -> tuple[list, list]:
    ents, ignore = [_entity("EMAIL", *email, f"source={source}")], []
    if is_person_name(line[name[0]:name[1]]):
        ents.append(_entity("PERSON", *name, f"source={source}"))
    else:
        ignore.append(list(name))
    return ents, ignore


def _debian_copyright_lines(path: str) -> Iterator[tuple[str, list, list]]:
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.rstrip()
        if m := _COPYRIGHT_LINE.match(line):
            yield (line, *_name_email_line(line, m.span("name"), m.span("email"), "debian-copyright"))
        elif _SAFE_DEB.match(line):
            yield line, [], []


def _debian_changelog_lines(path: str) -> Iterator[tuple[str, list, list]]:
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.rstrip()
            if m := _CHANGELOG_TRAILER.match(line):
                yield (line, *_name_email_line(line, m.span("name"), m.span("email"), "debian-changelog"))
            elif _CHANGELOG_HEADER.match(line):
                yield line, [], []


def _metadata_lines(path: str) -> Iterator[tuple[str, list, list]]:
    header = Path(path).read_text(encoding="utf-8", errors="replace").split("\n\n", 1)[0]
    for line in header.splitlines():
        if m := _META_PERSON.match(line):
            s, e = m.span("name")
            ok = is_person_name(m.group("name"))
            yield line, ([_entity("PERSON", s, e, "source=metadata")] if ok else []), ([] if ok else [[s, e]])
        elif m := _META_EMAILS.match(line):
            value, base = m.group("value"), m.start("value")
            items = value.split(",")
            if "\"" in value or len(items) > 4:
                continue  # quoted names may hold commas: not parsed reliably
            ents, ignore, pos = [], [], 0
            for item in items:
                im = _META_ITEM.fullmatch(item)
                if not im:
                    break
                off = base + pos
                if im.group("bare"):
                    ents.append(_entity("EMAIL", off + im.start("bare"), off + im.end("bare"), "source=metadata"))
                else:
                    ents.append(_entity("EMAIL", off + im.start("email"), off + im.end("email"), "source=metadata"))
                    if im.group("name"):
                        ns, ne = off + im.start("name"), off + im.end("name")
                        if is_person_name(im.group("name")):
                            ents.append(_entity("PERSON", ns, ne, "source=metadata"))
                        else:
                            ignore.append([ns, ne])
                pos += len(item) + 1
            else:
                yield line, ents, ignore
        elif _SAFE_META.match(line):
            yield line, [], []


def _chunks(lines: list[tuple[str, list, list]], rng: random.Random, size: int) -> Iterator[tuple[str, list, list]]:
    """Runs of up to `size` lines (at least one with an entity) joined with newlines."""
    i = 0
    while i < len(lines):
        k = rng.randint(1, size)
        part, i = lines[i:i + k], i + k
        if not any(e for _, e, _ in part):
            continue
        text, ents, ignore = "", [], []
        for line, e, ig in part:
            off = len(text) + (1 if text else 0)
            text = f"{text}\n{line}" if text else line
            ents += [{**x, "start": x["start"] + off, "end": x["end"] + off} for x in e]
            ignore += [[s + off, t + off] for s, t in ig]
        yield text, ents, ignore


def _site_metadata() -> list[str]:
    import site

    dirs = [p for p in site.getsitepackages() if os.path.isdir(p)]
    return sorted({p for d in dirs for p in glob.glob(os.path.join(d, "*.dist-info", "METADATA"))})


def build_real(n: int = DEFAULT_SIZE["real"], seed: int = 0) -> list[Doc]:
    """About 40% copyright, 40% changelog and 20% METADATA documents, seeded sample, no duplicates."""
    rng = random.Random(f"{seed}:pii-real")
    sources: dict[str, tuple[Callable[[str], Iterable], list[str]]] = {
        "debian-copyright": (_debian_copyright_lines, sorted(glob.glob("/usr/share/doc/*/copyright"))),
        "debian-changelog": (_debian_changelog_lines, sorted(glob.glob("/usr/share/doc/*/changelog.Debian.gz"))),
        "metadata": (_metadata_lines, _site_metadata()),
    }
    share = {"debian-copyright": 0.4, "debian-changelog": 0.4, "metadata": 0.2}
    pools: dict[str, list[Doc]] = {}
    for name, (read, paths) in sources.items():
        seen, pool = set(), []
        for path in paths:
            try:
                lines = list(read(path))
            except (OSError, EOFError, gzip.BadGzipFile):
                continue
            if name == "debian-changelog":
                lines = lines[:24]  # the latest entries; old changelogs repeat the same uploaders
            for text, ents, ignore in _chunks(lines, rng, 6):
                if text not in seen:
                    seen.add(text)
                    pool.append({"text": text, "entities": ents, "ignore": ignore,
                                 "meta": {"source": name, "path": path}})
        pools[name] = pool
    docs = []
    for name, pool in pools.items():
        docs += rng.sample(pool, min(len(pool), round(n * share[name])))
    rng.shuffle(docs)
    return [{"id": f"real-{i:05d}", "set": "real", **d} for i, d in enumerate(docs[:n])]


# ----------------------------------------------------------------------------- demo


def demo_documents(corpus_dir: Path, ids: set[str] | None = None, domains: tuple[str, ...] = ("web", "books")) -> \
        Iterator[dict[str, Any]]:
    """Records of the demo corpus (id, text, domain, ...) of `domains`, optionally only `ids`."""
    for path in sorted((corpus_dir / "corpus").glob("*.jsonl.gz")):
        if not path.name.startswith(domains):
            continue
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                if ids is None or rec["id"] in ids:
                    yield rec


def build_demo(corpus_dir: Path = DEMO_DIR) -> list[Doc]:
    """Planted PII of the demo corpus; each planted sentence is its own paragraph (`_plant`)."""
    from curation.pii import OUR_TYPE

    truth_path = corpus_dir / "truth.json"
    if not truth_path.exists():
        print(f"demo set skipped: {truth_path} not found (build the demo corpus first)", file=sys.stderr)
        return []
    items: dict[str, list[dict]] = {}
    for item in json.loads(truth_path.read_text(encoding="utf-8"))["pii"]:
        items.setdefault(item["doc_id"], []).append(item)
    docs = []
    for rec in demo_documents(corpus_dir, set(items)):
        text, ents, scored = rec["text"], [], set()
        for it in items[rec["id"]]:
            assert text[it["start"]:it["end"]] == it["value"], (rec["id"], it)
            start = text.rfind("\n\n", 0, it["start"])
            start = 0 if start < 0 else start + 2
            end = text.find("\n\n", it["end"])
            scored.add((start, len(text) if end < 0 else end))
            detail = it.get("detail") or ""
            key = {"PHONE_NUMBER": "region", "CREDIT_CARD": "brand", "IBAN_CODE": "country"}.get(it["type"], "detail")
            ents.append(_entity(OUR_TYPE[it["type"]], it["start"], it["end"], f"{key}={detail}" if detail else ""))
        ignore, pos = [], 0
        for s, e in sorted(scored):
            if s > pos:
                ignore.append([pos, s])
            pos = max(pos, e)
        if pos < len(text):
            ignore.append([pos, len(text)])
        docs.append({"id": rec["id"], "text": text, "set": "demo", "entities": ents, "ignore": ignore,
                     "meta": {"domain": rec["domain"], "scored_sentences": len(scored)}})
    return sorted(docs, key=lambda d: d["id"])


# ----------------------------------------------------------------------------- all


def build_sets(sets: Iterable[str] = SETS, seed: int = 0, limit: int | None = None,
               demo_dir: Path = DEMO_DIR) -> list[Doc]:
    """Every requested set, validated; `limit` caps each set (the first documents, seeded order)."""
    out = []
    for name in sets:
        if name == "faker":
            docs = build_faker(limit or DEFAULT_SIZE["faker"], seed)
        elif name == "real":
            docs = build_real(limit or DEFAULT_SIZE["real"], seed)
        elif name == "nemo":
            docs = build_nemo()
        elif name == "demo":
            docs = build_demo(demo_dir)
        else:
            raise ValueError(f"unknown set {name!r}; known: {', '.join(SETS)}")
        docs = docs[:limit] if limit else docs
        for d in docs:
            validate(d)
        out += docs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="documents per set at most")
    ap.add_argument("--demo-dir", type=Path, default=DEMO_DIR)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "pii-eval.jsonl")
    args = ap.parse_args()
    docs = build_sets(args.sets.split(","), args.seed, args.limit, args.demo_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    from collections import Counter

    by_set = Counter(d["set"] for d in docs)
    ents = Counter((d["set"], e["type"]) for d in docs for e in d["entities"])
    print(f"wrote {len(docs)} documents to {args.out}")
    for s, n in by_set.items():
        types = ", ".join(f"{t} {c}" for (ss, t), c in sorted(ents.items()) if ss == s)
        print(f"  {s:6s} {n:4d} docs: {types}")


if __name__ == "__main__":
    main()
