"""A labelled real-vs-garbage set for judging the perplexity filter, built offline and seeded.

Real text: chunks (300-3,000 chars, cut at blank lines) of five independent sources on this
machine, read by the demo corpus's own readers so they look like what the stage filters:
the Python language reference (`pydoc_data.topics`), GNU info manuals, Debian copyright
files, PyPI package descriptions (METADATA) and the common licence texts. None of them is
reference text of the demo's LMs (web: Debian README/NEWS files, books: stdlib docstrings);
`overlap` measures what is shared anyway (licence paragraphs quoted in READMEs, say).

Garbage, six kinds, each generated from its own templates with lengths drawn from the real
documents' lengths:
- shuffled: the words of a real chunk (one not in the real set) shuffled, line lengths kept;
- spam: SEO keyword lists, title bars, hashtags, "buy X online" stuffing;
- menu: navigation menus, breadcrumbs, footers, pagination, language switchers;
- boilerplate: cookie banners, legal footers, copyright and "All rights reserved" walls;
- repetition: machine-translated-looking text: phrase loops, stutter ("the the of of"),
  salads of a few repeated phrases of a real chunk;
- table: number tables, base64 blobs, hex dumps, hash and UUID lists.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
import textwrap
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from curation import demo_corpus as dc

REAL_SOURCES: dict[str, Callable] = {
    "pydoc": dc._pydoc_topics,
    "info": dc._info_nodes,
    "copyright": dc._debian_copyrights,
    "pypi": dc._package_readmes,
    "licenses": dc._common_licenses,
}
GARBAGE_KINDS = ("shuffled", "spam", "menu", "boilerplate", "repetition", "table")


@dataclass(frozen=True)
class Example:
    text: str
    garbage: bool
    kind: str  # the real source or the garbage kind
    source: str = ""  # for real chunks: the file they come from


def chunks(text: str, max_chars: int = 3000, min_chars: int = 300) -> list[str]:
    """Consecutive pieces of `text` of at most `max_chars`, cut at blank lines."""
    out, cur = [], ""
    for para in re.split(r"\n\s*\n", dc._clean(text)):
        if cur and len(cur) + len(para) + 2 > max_chars:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para[:max_chars]
    out.append(cur)
    return [c for c in out if len(c) >= min_chars]


def real_pools(seed: int, per_source: int, exclude: tuple[str, ...] = (), per_file: int = 3
               ) -> tuple[list[Example], list[Example]]:
    """(evaluation set, spare pool) of real chunks: `per_source` chunks of each source but those
    in `exclude` (an LM's own training source), at most `per_file` from one file; exact
    duplicates (Debian quotes the same licences) are dropped."""
    rng = random.Random(seed)
    chosen, spare, seen = [], [], set()
    for name, read in REAL_SOURCES.items():
        if name in exclude:
            continue
        candidates = []
        for raw in read():
            pieces = chunks(raw.text)
            rng.shuffle(pieces)
            for piece in pieces[:per_file]:
                key = hashlib.sha1(" ".join(piece.lower().split()).encode()).digest()
                if key not in seen:
                    seen.add(key)
                    candidates.append(Example(piece, False, name, raw.path))
        rng.shuffle(candidates)
        chosen += candidates[:per_source]
        spare += candidates[per_source:]
    return chosen, spare


# ----------------------------------------------------------------------------- garbage

def _wrap(words: list[str], rng: random.Random) -> str:
    return "\n".join(textwrap.wrap(" ".join(words), width=rng.randint(55, 100)))


def _fill(make_block: Callable[[], str], target: int) -> str:
    parts, size = [], 0
    while size < target:
        block = make_block()
        parts.append(block)
        size += len(block) + 2
    return "\n\n".join(parts)


def shuffled(pool: Example, rng: random.Random, target: int) -> str:
    lines = [line.split() for line in pool.text.split("\n")]
    words = [w for line in lines for w in line]
    rng.shuffle(words)
    out, i = [], 0
    for line in lines:  # the same number of words on each line as the original
        out.append(" ".join(words[i:i + len(line)]))
        i += len(line)
    return "\n".join(out)


_PRODUCTS = ("cheap flights", "hotels", "car insurance", "payday loans", "replica watches", "designer handbags",
             "running shoes", "weight loss pills", "online casino", "crypto trading", "web hosting", "seo services",
             "vpn", "essay writing service", "phone cases", "wedding dresses", "used cars", "forex signals",
             "keto diet", "cbd oil", "dating site", "mortgage rates", "sports betting", "air jordans", "led lights",
             "viagra", "iphone", "gaming laptop", "hair extensions", "solar panels", "bitcoin")
_MODIFIERS = ("cheap", "best", "buy", "discount", "free", "top", "online", "sale", "official", "wholesale",
              "deals", "2024", "near me", "for sale", "coupon code", "promo code", "review", "free shipping",
              "outlet", "lowest price", "top rated", "guaranteed", "fast", "no credit check", "uk", "usa")
_PLACES = ("london", "new york", "dubai", "paris", "toronto", "sydney", "berlin", "california", "texas", "india")


def _keyword(rng: random.Random) -> str:
    words = [rng.choice(_PRODUCTS)]
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randint(0, len(words)), rng.choice(_MODIFIERS + _PLACES))
    phrase = " ".join(words)
    return phrase.title() if rng.random() < 0.4 else phrase


def spam(pool: Example, rng: random.Random, target: int) -> str:
    def block() -> str:
        kws = [_keyword(rng) for _ in range(rng.randint(4, 14))]
        style = rng.randrange(6)
        if style == 0:
            return "\n".join(textwrap.wrap(", ".join(kws), rng.randint(60, 120)))
        if style == 1:
            return " | ".join(k.title() for k in kws[:6])
        if style == 2:
            return "Tags: " + ", ".join(kws)
        if style == 3:
            return " ".join("#" + k.replace(" ", "") for k in kws)
        if style == 4:
            k, p = kws[0], rng.choice(_PLACES)
            return (f"Looking for {k}? We offer the best {k} in {p}. Buy {k} online, {k} {p}, {kws[1]}, "
                    f"{kws[2]}. {k.capitalize()} {rng.choice(_MODIFIERS)} {rng.choice(_MODIFIERS)}!")
        return "\n".join(" ".join([kws[0]] * rng.randint(2, 5) + kws[1:3]) for _ in range(rng.randint(2, 6)))
    return _fill(block, target)


_MENU = ("Home", "About", "About Us", "Contact", "Contact Us", "Privacy Policy", "Terms of Service",
         "Terms & Conditions", "Blog", "News", "Shop", "Products", "Services", "Careers", "FAQ", "Help",
         "Support", "Login", "Log in", "Sign up", "Register", "My Account", "Cart", "Checkout", "Wishlist",
         "Sitemap", "Search", "Menu", "Skip to content", "Back to top", "Categories", "Archives", "Events",
         "Gallery", "Our Team", "Press", "Investors", "Partners", "Resources", "Downloads", "Pricing",
         "Features", "Subscribe", "Newsletter", "Follow us", "Facebook", "Twitter", "Instagram", "LinkedIn",
         "YouTube", "Cookie Settings", "Accessibility", "Store Locator", "Gift Cards", "Returns", "Shipping")
_LANGS = ("English", "Deutsch", "Français", "Español", "Italiano", "Português", "Nederlands", "Polski", "日本語")


def menu(pool: Example, rng: random.Random, target: int) -> str:
    topics = sorted({w.strip(".,:;()'\"").title() for w in pool.text.split() if w.isalpha() and len(w) > 4})
    topics = topics or ["Products"]

    def item() -> str:
        return rng.choice(_MENU) if rng.random() < 0.6 else rng.choice(topics)

    def block() -> str:
        style = rng.randrange(5)
        if style == 0:
            return "\n".join(item() for _ in range(rng.randint(5, 20)))
        if style == 1:
            sep = rng.choice((" > ", " » ", " / ", " › "))
            return "\n".join(sep.join(["Home"] + [rng.choice(topics) for _ in range(rng.randint(1, 4))])
                             for _ in range(rng.randint(1, 3)))
        if style == 2:
            return rng.choice((" | ", " · ", "  ")).join(item() for _ in range(rng.randint(4, 10)))
        if style == 3:
            last = rng.randint(5, 40)
            return (f"« Previous 1 2 3 … {last} Next »\n"
                    f"Posted in {item()} | Tagged {item()}, {item()} | Leave a comment")
        return "\n".join(rng.sample(_LANGS, rng.randint(3, len(_LANGS))))
    return _fill(block, target)


_COMPANIES = ("Acme Corp", "Northwind Traders", "Globex Inc.", "Initech LLC", "Umbrella Group", "Contoso Ltd")
_BOILERPLATE = dc.BOILERPLATE + (
    "Copyright © {year} {company}. All rights reserved.",
    "© {year} {company}. All Rights Reserved. Unauthorized reproduction is prohibited.",
    "We use cookies and similar technologies to personalise content and ads, to provide social media "
    "features and to analyse our traffic.",
    "Accept all cookies. Reject non-essential cookies. Manage preferences.",
    "The information on this website is provided for general information purposes only and does not "
    "constitute legal advice.",
    "{company} is not responsible for the content of external websites.",
    "Powered by WordPress. Theme by {company}.",
    "No part of this publication may be reproduced without the prior written permission of {company}.",
    "Your privacy is important to us. Please read our privacy policy and terms of use.",
    "Prices include VAT. Free shipping on orders over $50.",
    "Subscribe to our mailing list. We will never share your email address.",
    "This site is protected by reCAPTCHA and the Google Privacy Policy and Terms of Service apply.",
)


def boilerplate(pool: Example, rng: random.Random, target: int) -> str:
    company, year = rng.choice(_COMPANIES), rng.randint(2005, 2025)

    def block() -> str:
        sentences = rng.sample(_BOILERPLATE, rng.randint(1, 4)) * rng.randint(1, 3)
        return "\n".join(s.format(company=company, year=year) for s in sentences)
    return _fill(block, target)


_FUNCTION_WORDS = ("the", "of", "to", "and", "a", "in", "is", "that", "for", "it", "with", "as", "on", "be")


def repetition(pool: Example, rng: random.Random, target: int) -> str:
    words = pool.text.split()
    out: list[str] = []
    style = rng.randrange(3)
    while sum(len(w) + 1 for w in out) < target:
        if style == 0:  # n-gram loops: a span of the text said again and again
            i, n = rng.randrange(len(words)), rng.randint(2, 6)
            out += words[i:i + n] * rng.randint(2, 6)
        elif style == 1:  # stutter: words doubled, function words dropped in anywhere
            i = rng.randrange(len(words))
            for w in words[i:i + 20]:
                out += [w] * (2 if rng.random() < 0.4 else 1)
                if rng.random() < 0.3:
                    out += [rng.choice(_FUNCTION_WORDS)] * rng.randint(1, 2)
        else:  # a salad of a few phrases of the text, each said many times
            starts = [rng.randrange(len(words)) for _ in range(rng.randint(3, 6))]
            phrases = [words[s:s + rng.randint(2, 4)] for s in starts]
            for _ in range(rng.randint(8, 20)):
                out += rng.choice(phrases)
    return _wrap(out, rng)


def table(pool: Example, rng: random.Random, target: int) -> str:
    style = rng.randrange(4)
    if style == 0:  # a number table
        cols, sep = rng.randint(3, 8), rng.choice(("  ", "\t", " | ", ","))
        fmts = [rng.choice(("{:d}", "{:.2f}", "{:.1f}%", "{:.4f}", "20{:02d}-0{}-1{}")) for _ in range(cols)]

        def cell(f: str) -> str:
            if f.startswith("20"):
                return f.format(rng.randint(0, 24), rng.randint(1, 9), rng.randint(0, 9))
            return f.format(rng.randint(0, 99999)) if f == "{:d}" else f.format(rng.uniform(0, 1000))
        return _fill(lambda: sep.join(cell(f) for f in fmts), target).replace("\n\n", "\n")
    if style == 1:  # a base64 blob
        blob = base64.b64encode(rng.randbytes(target * 3 // 4)).decode()
        prefix = rng.choice(("", "data:image/png;base64,", "-----BEGIN CERTIFICATE-----\n"))
        return prefix + "\n".join(textwrap.wrap(blob, 76))
    if style == 2:  # a hex dump
        def row() -> str:
            data = rng.randbytes(16)
            return f"{rng.randrange(1 << 24):08x}  " + " ".join(f"{b:02x}" for b in data)
        return _fill(row, target).replace("\n\n", "\n")
    def digest() -> str:  # hash and UUID lists
        if rng.random() < 0.5:
            return f"{hashlib.sha256(rng.randbytes(8)).hexdigest()}  {rng.choice(('sha256', 'file', 'id'))}"
        return str(uuid.UUID(int=rng.getrandbits(128)))
    return _fill(digest, target).replace("\n\n", "\n")


GENERATORS: dict[str, Callable[[Example, random.Random, int], str]] = {
    "shuffled": shuffled, "spam": spam, "menu": menu, "boilerplate": boilerplate,
    "repetition": repetition, "table": table,
}


def build(seed: int = 0, per_source: int = 120, per_kind: int = 100, exclude: tuple[str, ...] = ()
          ) -> tuple[list[Example], list[Example]]:
    """(real chunks of every source but `exclude`, `per_kind` garbage documents of every kind).

    Garbage made from real text (shuffled, repetition) comes from the same sources as the real
    set: garbage made of an LM's own training domain scores well under it only for being
    in-domain, which is not what the comparison is about."""
    rng = random.Random(seed)
    real, spare = real_pools(seed, per_source, exclude)
    lengths = [len(e.text) for e in real]
    garbage = [Example(make(rng.choice(spare), rng, rng.choice(lengths)), True, kind)
               for kind, make in GENERATORS.items() for _ in range(per_kind)]
    return real, garbage


def mix(real: list[Example], garbage: list[Example], garbage_share: float, seed: int = 0) -> list[Example]:
    """All the real documents and a seeded sample of the garbage (the same count of each kind)
    so that garbage is `garbage_share` of the result."""
    rng = random.Random(seed)
    kinds = sorted({e.kind for e in garbage})
    n_kind = round(len(real) * garbage_share / (1 - garbage_share) / len(kinds))
    picked = [e for k in kinds for e in rng.sample([e for e in garbage if e.kind == k], n_kind)]
    return real + picked


def overlap(examples: list[Example], reference_texts: list[str], min_chars: int = 40) -> float:
    """Share of the real set's lines (of at least `min_chars`) that occur in the reference text."""
    ref = {line.strip() for t in reference_texts for line in t.split("\n") if len(line.strip()) >= min_chars}
    lines = [line.strip() for e in examples if not e.garbage for line in e.text.split("\n")
             if len(line.strip()) >= min_chars]
    return sum(line in ref for line in lines) / max(1, len(lines))
