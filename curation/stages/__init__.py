"""Stage registry: name -> "module:Class".

Modules are imported only when a run names them, so validating a config never loads Presidio,
fastText or KenLM. A stage module must keep its heavy imports inside `setup()`/`run()`.
"""

from __future__ import annotations

import importlib

STAGES: dict[str, str] = {
    "url_dedup": "curation.stages.url_dedup:UrlDedup",
    "exact_dedup": "curation.stages.exact_dedup:ExactDedup",
    "minhash_dedup": "curation.stages.minhash_dedup:MinHashDedup",
    "simhash_sentence_dedup": "curation.stages.simhash_sentence_dedup:SimHashSentenceDedup",
    "language": "curation.stages.language:LanguageFilter",
    "perplexity": "curation.stages.perplexity:PerplexityFilter",
    "heuristics": "curation.stages.heuristics:HeuristicFilter",
    "pii": "curation.stages.pii:PiiRedaction",
    "mixture": "curation.stages.mixture:MixtureSampler",
    "tokenize": "curation.stages.tokenize:Tokenize",
}


class UnknownStage(ValueError):
    pass


class StageUnavailable(ValueError):
    pass


def stage_class(name: str):
    """The class registered under `name`; a clear error for unknown or not-yet-built stages."""
    try:
        target = STAGES[name]
    except KeyError:
        raise UnknownStage(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}") from None
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise StageUnavailable(f"stage {name!r} is not available in this version of flywheel") from None
        raise
    return getattr(module, cls_name)
