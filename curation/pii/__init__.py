"""PII detection and redaction on Presidio (see `engine.py`, imported only by a stage's setup).

This module holds the entity vocabulary alone, so that validating a config never imports
Presidio or spaCy. One name per entity type serves the config (`entities:`), the placeholder
(`<EMAIL>`), the hash tag (`<PERSON:3f2a1b>`) and the `pii_counts` column.
"""

from __future__ import annotations

# Our name -> Presidio entity type of the recognizer that finds it.
PRESIDIO_TYPE: dict[str, str] = {
    "EMAIL": "EMAIL_ADDRESS",
    "PHONE": "PHONE_NUMBER",
    "CREDIT_CARD": "CREDIT_CARD",  # Luhn checksum
    "IP": "IP_ADDRESS",
    "IBAN": "IBAN_CODE",  # mod-97 checksum
    "SSN": "US_SSN",
    "CREDENTIAL": "URL_CREDENTIAL",  # the user:password of scheme://user:password@host
    "API_KEY": "API_KEY",  # vendor token formats (AWS, GitHub, Slack, Stripe)
    "CRYPTO": "CRYPTO",  # Bitcoin (checksum), Ethereum
    "PERSON": "PERSON",  # spaCy NER
    "LOCATION": "LOCATION",  # spaCy NER (GPE, LOC, FAC)
}
OUR_TYPE: dict[str, str] = {v: k for k, v in PRESIDIO_TYPE.items()}

ENTITIES: tuple[str, ...] = tuple(PRESIDIO_TYPE)
# Entities that need the NER model; the rest are patterns + checksums.
NER_ENTITIES: frozenset[str] = frozenset({"PERSON", "LOCATION"})

# Regions whose national phone formats are parsed (any number written with +country code is
# found whatever the list). The English-speaking countries and the countries of the largest
# Common Crawl languages after English (de, ru, ja, zh, es, fr, it, pt, pl, nl): where web text
# comes from. Presidio's default is 8 regions (with "UK", which `phonenumbers` does not know).
# Each region is one more `PhoneNumberMatcher` pass, affordable here because it runs on
# trigger regions only.
DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("US", "CA", "GB", "IE", "AU", "NZ", "IN", "DE", "RU", "JP", "CN",
                                          "ES", "MX", "FR", "IT", "BR", "PT", "PL", "NL")
