"""The modified Kneser-Ney estimator: ARPA that KenLM loads, proper distributions, and the
probabilities of a brute-force evaluation of the Chen & Goodman formulas."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest

kenlm = pytest.importorskip("kenlm")

from curation.lm.kneser_ney import BOS, EOS, FALLBACK_DISCOUNTS, UNK, estimate_arpa  # noqa: E402
from curation.lm.perplexity import DomainModel, perplexity  # noqa: E402
from curation.lm.tokens import tokenize_line, tokenize_lines  # noqa: E402
from curation.lm.train import model_record_path, train_lm  # noqa: E402

# A few common words and a long tail, so every order has n-grams seen once, twice, ... (the
# counts-of-counts the discounts are estimated from).
WORDS = "the cat dog sat on mat a big small red house tree ran fast slow".split() + [f"w{i}" for i in range(200)]


def random_sentences(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    # A skewed (Zipf-like) choice gives the counts-of-counts of real text.
    weights = [1 / (i + 1) for i in range(len(WORDS))]
    return [rng.choices(WORDS, weights, k=rng.randint(1, 9)) for _ in range(n)]


def state_after(model, context: list[str]):
    state = kenlm.State()
    model.BeginSentenceWrite(state)
    for word in context:
        nxt = kenlm.State()
        model.BaseScore(state, word, nxt)
        state = nxt
    return state


@pytest.mark.parametrize("order", [2, 3, 5])
def test_arpa_loads_and_each_context_is_a_distribution(tmp_path, order):
    path = tmp_path / "m.arpa"
    stats = estimate_arpa(random_sentences(3000, seed=order), path, order=order)
    model = kenlm.Model(str(path))
    assert model.order == order
    assert stats.vocab == len(WORDS) + 2  # + </s> and <unk>
    vocab = [*WORDS, EOS, UNK]
    contexts = [[], ["the"], ["the", "cat"], ["cat", "sat", "on"], ["red", "red", "red", "red"], ["zzz"]]
    for context in contexts:
        state = state_after(model, context)
        total = sum(10 ** model.BaseScore(state, w, kenlm.State()) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-4), context


def reference_model(sentences: list[list[str]], order: int):
    """p(w | h) straight from the definitions, counting every n-gram by scanning positions."""
    raw = [Counter() for _ in range(order + 1)]
    for s in sentences:
        padded = [BOS, *s, EOS]
        for n in range(1, order + 1):
            for i in range(len(padded) - n + 1):
                raw[n][tuple(padded[i:i + n])] += 1
    adjusted = [Counter() for _ in range(order + 1)]
    for n in range(1, order + 1):
        for g, c in raw[n].items():
            if g == (BOS,):
                continue
            if n == order or g[0] == BOS:
                adjusted[n][g] = c
            else:
                adjusted[n][g] = len({v[0] for v in raw[n + 1] if v[1:] == g})
    disc = {}
    for n in range(1, order + 1):
        t = Counter(adjusted[n].values())
        y = t[1] / (t[1] + 2 * t[2])
        d = [k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3)]
        disc[n] = d if all(t[k] for k in (1, 2, 3, 4)) and all(0 < d[k - 1] < k for k in (1, 2, 3)) \
            else list(FALLBACK_DISCOUNTS)
    vocab_size = len(adjusted[1]) + (0 if (UNK,) in adjusted[1] else 1)

    def d_of(n, c):
        return 0.0 if c == 0 else disc[n][min(c, 3) - 1]

    def prob(word: str, history: tuple[str, ...]) -> float:
        n = len(history) + 1
        lower = 1 / vocab_size if n == 1 else prob(word, history[1:])
        following = {g: c for g, c in adjusted[n].items() if g[:-1] == history}
        total = sum(following.values())
        if total == 0:
            return lower  # unseen context: nothing to interpolate at this order
        gamma = sum(d_of(n, c) for c in following.values()) / total
        c = following.get((*history, word), 0)
        return (c - d_of(n, c)) / total + gamma * lower

    return prob


def test_probabilities_match_a_brute_force_evaluation(tmp_path):
    order = 3
    sentences = random_sentences(400, seed=7)
    path = tmp_path / "m.arpa"
    stats = estimate_arpa(sentences, path, order=order)
    assert stats.discount_fallback == []  # the real formula is exercised at every order
    model = kenlm.Model(str(path))
    prob = reference_model(sentences, order)
    for sentence in [["the", "cat", "sat", "on", "the", "mat"], ["red", "tree", "ran"], ["slow", "zzz", "dog"]]:
        padded = [BOS, *sentence, EOS]
        got = [score for score, _, _ in model.full_scores(" ".join(sentence), bos=True, eos=True)]
        want = []
        for i in range(1, len(padded)):
            word = padded[i] if padded[i] in WORDS or padded[i] == EOS else UNK
            history = tuple(padded[max(0, i - order + 1):i])
            history = tuple(UNK if w not in WORDS and w != BOS else w for w in history)
            want.append(math.log10(prob(word, history)))
        assert got == pytest.approx(want, abs=2e-5)


def test_tokenisation_is_shared_and_normalised():
    text = "Héllo  Wörld—it’s 2024!\tTab…\n\n  \nSecond LINE"
    assert list(tokenize_lines(text)) == [
        ["hello", "world", "-", "it", "'", "s", "0000", "!", "tab", ".", ".", "."],
        ["second", "line"],
    ]
    # scoring a line and training on a document see the same tokens
    assert [tokenize_line(line) for line in text.split("\n") if tokenize_line(line)] == list(tokenize_lines(text))
    assert tokenize_line("def Foo(x_1): return x_1+2", "code") == \
        ["def", "Foo", "(", "x_0", ")", ":", "return", "x_0", "+", "0"]


def prose_documents() -> list[str]:
    """English from the interpreter's own documentation: real text, offline."""
    import pydoc_data.topics

    docs = []
    for _, text in sorted(pydoc_data.topics.topics.items()):
        paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if len(p.split()) > 12]
        docs += ["\n".join(paragraphs[i:i + 4]) for i in range(0, len(paragraphs), 4)]
    return docs


def test_train_lm_reference_text_scores_lower_than_shuffled_words(tmp_path):
    docs = prose_documents()
    train, held_out = docs[::4] + docs[1::4] + docs[2::4], docs[3::4][:60]
    corpus = tmp_path / "web.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(train)))
    stats = train_lm("web", str(corpus), tmp_path / "web.arpa", order=3)
    assert stats["documents"] == len(train) and stats["tokenizer"] == "prose"
    assert stats["tokens"] > 50_000 and len(stats["ngrams"]) == 3 and stats["seconds"] > 0
    assert json.loads((tmp_path / "web.arpa.json").read_text())["tokenizer"] == "prose"

    model = DomainModel(str(tmp_path / "web.arpa"), "web")
    rng = random.Random(0)
    better = 0
    for doc in held_out:
        words = doc.split()
        rng.shuffle(words)
        better += model.perplexity(doc) < model.perplexity(" ".join(words))
    assert better == len(held_out)
    # cc_net's aggregation: one </s> per line, log-probs summed over the lines
    doc = "the value of x\nis returned"
    lines = [" ".join(tokenize_line(line)) for line in doc.split("\n")]
    log_prob = sum(model.model.score(line, bos=True, eos=True) for line in lines)
    assert perplexity(model.model, doc, "prose") == pytest.approx(10 ** (-log_prob / (4 + 1 + 2 + 1)))


def test_code_models_record_their_tokenizer(tmp_path):
    corpus = tmp_path / "code.jsonl"
    source = "def Area(width, height):\n    return width * height\n"
    corpus.write_text("".join(json.dumps({"content": source.replace("Area", f"Area{i}")}) + "\n" for i in range(30)))
    stats = train_lm("code", str(corpus), tmp_path / "code.arpa", order=3, text_field="content")
    assert stats["tokenizer"] == "code" and stats["documents"] == 30
    assert json.loads(open(model_record_path(tmp_path / "code.arpa")).read())["tokenizer"] == "code"
    model = DomainModel(str(tmp_path / "code.arpa"), "code")
    assert model.kind == "code"
    assert model.perplexity(source) < model.perplexity(source.upper())  # case is kept
