"""The `language` stage (fastText lid.176) and the fastText domain classifier."""

from __future__ import annotations

import json
import random
from collections import Counter

import pyarrow as pa
import pytest

from curation import langid
from curation.classifier import train_classifier
from curation.config import ConfigError, parse_config
from curation.stages.base import DETAIL, REASON, RunContext
from curation.stages.language import LanguageFilter, LanguageParams
from tests.helpers import docs_table

SENTENCES = {
    "en": [
        "The committee will publish its final report at the end of next month.",
        "She walked to the station in the rain because the buses were not running.",
        "Most of the bugs were fixed before the release, but a few remain open.",
        "We planted tomatoes and beans in the garden behind the old house.",
        "If you have any questions about your order, please contact our support team.",
    ],
    "de": [
        "Der Ausschuss wird seinen Abschlussbericht Ende nächsten Monats veröffentlichen.",
        "Sie ging im Regen zum Bahnhof, weil die Busse nicht fuhren.",
        "Die meisten Fehler wurden vor der Veröffentlichung behoben, einige sind noch offen.",
        "Wir haben Tomaten und Bohnen im Garten hinter dem alten Haus gepflanzt.",
        "Wenn Sie Fragen zu Ihrer Bestellung haben, wenden Sie sich bitte an unseren Kundendienst.",
    ],
    "fr": [
        "Le comité publiera son rapport final à la fin du mois prochain.",
        "Elle est allée à la gare sous la pluie parce que les bus ne circulaient pas.",
        "La plupart des erreurs ont été corrigées avant la sortie, mais quelques-unes restent ouvertes.",
        "Nous avons planté des tomates et des haricots dans le jardin derrière la vieille maison.",
        "Si vous avez des questions sur votre commande, veuillez contacter notre service client.",
    ],
    "es": [
        "El comité publicará su informe final a finales del próximo mes.",
        "Ella caminó hasta la estación bajo la lluvia porque los autobuses no funcionaban.",
        "La mayoría de los errores se corrigieron antes del lanzamiento, pero algunos siguen abiertos.",
        "Plantamos tomates y judías en el jardín detrás de la casa vieja.",
        "Si tiene alguna pregunta sobre su pedido, póngase en contacto con nuestro equipo de soporte.",
    ],
    "it": [
        "Il comitato pubblicherà la sua relazione finale alla fine del mese prossimo.",
        "Lei è andata alla stazione sotto la pioggia perché gli autobus non passavano.",
        "La maggior parte degli errori è stata corretta prima del rilascio, ma alcuni restano aperti.",
        "Abbiamo piantato pomodori e fagioli nel giardino dietro la vecchia casa.",
        "Se avete domande sul vostro ordine, contattate il nostro servizio clienti.",
    ],
    "pt": [
        "O comitê vai publicar o relatório final no fim do próximo mês.",
        "Ela caminhou até a estação debaixo de chuva porque os ônibus não estavam circulando.",
        "A maioria dos erros foi corrigida antes do lançamento, mas alguns continuam abertos.",
        "Nós plantamos tomates e feijões no quintal atrás da casa antiga.",
        "Se você tiver alguma dúvida sobre o seu pedido, entre em contato com a nossa equipe.",
    ],
    "nl": [
        "De commissie publiceert haar eindrapport aan het einde van volgende maand.",
        "Ze liep in de regen naar het station omdat de bussen niet reden.",
        "De meeste fouten zijn vóór de release opgelost, maar een paar staan nog open.",
        "We hebben tomaten en bonen geplant in de tuin achter het oude huis.",
        "Als u vragen heeft over uw bestelling, neem dan contact op met onze klantenservice.",
    ],
    "ru": [
        "Комитет опубликует свой окончательный доклад в конце следующего месяца.",
        "Она пошла на вокзал под дождём, потому что автобусы не ходили.",
        "Большинство ошибок исправили до выпуска, но некоторые всё ещё открыты.",
        "Мы посадили помидоры и фасоль в саду за старым домом.",
        "Если у вас есть вопросы о заказе, пожалуйста, свяжитесь с нашей службой поддержки.",
    ],
}


def test_lid_accuracy_on_eight_languages():
    model = langid.load_model()
    texts = [s for sents in SENTENCES.values() for s in sents]
    gold = [lang for lang, sents in SENTENCES.items() for _ in sents]
    predicted, scores = langid.predict(model, texts)
    per_lang = Counter(g for g, p in zip(gold, predicted) if g == p)
    print("\nlang  correct/5")
    for lang in SENTENCES:
        print(f"{lang:5s} {per_lang[lang]}/5")
    accuracy = sum(per_lang.values()) / len(gold)
    assert accuracy >= 0.95, (accuracy, list(zip(gold, predicted)))
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_predict_handles_newlines_and_missing_text():
    model = langid.load_model()
    labels, scores = langid.predict(model, ["Das ist ein Satz.\nUnd noch einer\r\nhier.", None, ""])
    assert labels[0] == "de" and scores[0] > 0.5
    assert len(labels) == 3 and scores[1] < 0.5  # empty text: some label, low probability
    assert langid.predict(model, []) == ([], [])


CODE = "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(add(i, 1))"
MIXED_ROWS = [
    (SENTENCES["en"][0], "web"),
    (SENTENCES["fr"][1], "web"),
    (CODE, "code"),
    ("1234 5678 ### ;;", "web"),
    (SENTENCES["de"][2], None),
]


def _stage(**params) -> LanguageFilter:
    stage = LanguageFilter(LanguageParams(**params), RunContext(seed=0, output="/tmp/unused"))
    stage.setup()
    return stage


def test_stage_marks_languages_and_skips_code():
    out = _stage().process_batch(docs_table(MIXED_ROWS))
    assert out.num_rows == len(MIXED_ROWS)
    assert out.column(REASON).to_pylist() == ["", "language_not_kept", "", "language_low_score", "language_not_kept"]
    assert out.column("lang").to_pylist()[:3] == ["en", "fr", None]  # code: not identified
    assert out.column("lang_score").to_pylist()[2] is None
    detail = json.loads(out.column(DETAIL)[1].as_py())
    assert detail["lang"] == "fr" and detail["score"] > 0.9
    assert json.loads(out.column(DETAIL)[0].as_py()) == {}


def test_keep_any_and_several_languages():
    reasons = _stage(keep="any").process_batch(docs_table(MIXED_ROWS)).column(REASON).to_pylist()
    assert reasons == ["", "", "", "language_low_score", ""]
    reasons = _stage(keep=["en", "de"], skip_domains=[]).process_batch(docs_table(MIXED_ROWS)).column(REASON).to_pylist()
    assert reasons[0] == "" and reasons[1] == "language_not_kept" and reasons[4] == ""
    assert reasons[2] != ""  # code judged as language when not skipped: not English prose


def test_params_are_validated_in_the_config(tmp_path):
    base = {"inputs": ["x"], "output": str(tmp_path)}
    cfg = parse_config({**base, "stages": [{"name": "language", "keep": ["en", "de"], "min_score": 0.7}]})
    assert cfg.stages[0].params.keep == ["en", "de"]
    with pytest.raises(ConfigError, match="unknown parameter"):
        parse_config({**base, "stages": [{"name": "language", "keeep": ["en"]}]})
    with pytest.raises(ConfigError, match="model file not found"):
        parse_config({**base, "stages": [{"name": "language", "domain_model": str(tmp_path / "nope.bin")}]})
    with pytest.raises(ConfigError):
        parse_config({**base, "stages": [{"name": "language", "keep": []}]})


# -- domain classifier ----------------------------------------------------------------------
VOCAB = {
    "code": "function return variable compile import class method loop array pointer null "
            "integer string exception thread module parameter debug stack heap syntax".split(),
    "legal": "court plaintiff defendant contract clause statute liability appeal judge jury "
             "agreement party breach damages jurisdiction counsel verdict ruling tenant lease".split(),
    "medical": "patient dose symptom diagnosis treatment clinical therapy infection blood chronic "
               "surgery tablet vaccine fever nurse hospital prescription cardiac tumor allergy".split(),
    "news": "minister election government parliament vote protest economy president campaign "
            "reporter official crisis summit policy market inflation strike capital mayor poll".split(),
}
COMMON = "the a of and to in is that it for on with as was at by this be from or".split()


def _labelled_docs(rng: random.Random, n_per_domain: int) -> list[dict]:
    docs = []
    for domain, words in VOCAB.items():
        for _ in range(n_per_domain):
            n = rng.randint(10, 25)
            text = " ".join(rng.choice(words) if rng.random() < 0.5 else rng.choice(COMMON) for _ in range(n))
            docs.append({"text": text, "domain": domain})
    rng.shuffle(docs)
    return docs


HELD_OUT = [
    ("The function returns a null pointer when the array index is out of range.", "code"),
    ("Import the module, then call the class method inside the loop.", "code"),
    ("The judge ruled that the tenant breached the lease agreement.", "legal"),
    ("Counsel for the defendant filed an appeal against the verdict.", "legal"),
    ("The patient received a vaccine dose after the fever went down.", "medical"),
    ("Blood tests confirmed the diagnosis and chronic therapy began.", "medical"),
    ("The president met the minister before the parliament vote.", "news"),
    ("Inflation and the election campaign dominated the summit.", "news"),
]


@pytest.fixture(scope="module")
def domain_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clf")
    data = tmp / "labelled.jsonl"
    docs = _labelled_docs(random.Random(7), 150)
    docs.append({"text": "", "domain": "news"})  # skipped: no text
    docs.append({"text": "no label here"})  # skipped: no label
    data.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    report = train_classifier(data, tmp / "domain.bin", seed=7)
    return tmp / "domain.bin", report


def test_train_classifier_reports_and_predicts_held_out(domain_model):
    path, report = domain_model
    assert path.is_file()
    assert report["skipped"] == 2
    assert report["train_docs"] + report["valid_docs"] == 600
    assert set(report["labels"]) == set(VOCAB)
    assert report["valid_accuracy"] >= 0.95
    labels, _ = langid.predict(langid.load_model(path), [t for t, _ in HELD_OUT])
    accuracy = sum(p == g for p, (_, g) in zip(labels, HELD_OUT)) / len(HELD_OUT)
    assert accuracy >= 0.85, list(zip(labels, HELD_OUT))


def test_train_classifier_is_seeded(domain_model, tmp_path):
    path, report = domain_model
    data = tmp_path / "labelled.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in _labelled_docs(random.Random(7), 150)) + "\n")
    again = train_classifier(data, tmp_path / "again.bin", seed=7)
    assert (tmp_path / "again.bin").read_bytes() == path.read_bytes()
    assert again["valid_accuracy"] == report["valid_accuracy"]


def test_train_classifier_rejects_bad_labels(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"text": "x y", "domain": "Not A Domain"}) + "\n")
    with pytest.raises(ValueError, match="not a domain name"):
        train_classifier(data, tmp_path / "m.bin")


def test_stage_assigns_missing_domains(domain_model):
    path, _ = domain_model
    rows = [(HELD_OUT[0][0], None), (HELD_OUT[2][0], ""), (HELD_OUT[4][0], "web"), (HELD_OUT[6][0], None)]
    out = _stage(domain_model=str(path)).process_batch(docs_table(rows))
    assert out.column("domain").to_pylist() == ["code", "legal", "web", "news"]
    # The classifier's `code` is applied before skip_domains: that doc is not language-judged.
    assert out.column("lang").to_pylist()[0] is None and out.column("lang").to_pylist()[1] == "en"
    always = _stage(domain_model=str(path), assign_domain="always").process_batch(docs_table(rows))
    assert always.column("domain").to_pylist()[2] == "medical"
    never = _stage(domain_model=str(path), assign_domain="never").process_batch(docs_table(rows))
    assert never.column("domain").to_pylist() == [None, "", "web", None]


@pytest.mark.slow
def test_stage_in_ray_pipeline_marks_and_never_drops(ray_local):
    ray = ray_local
    rows = [(s, "web") for sents in SENTENCES.values() for s in sents] + [(CODE, "code")] * 3
    ds = ray.data.from_arrow(docs_table(rows)).repartition(4)
    stage = LanguageFilter(LanguageParams(), RunContext(seed=0, output="/tmp/unused", num_cpus=1))
    out = stage.run(ds).materialize()
    table = pa.concat_tables([ray.get(ref) for ref in out.to_arrow_refs()])
    assert table.num_rows == len(rows)
    assert sorted(table.column("id").to_pylist()) == sorted(f"d{i}" for i in range(len(rows)))
    reasons = Counter(table.column(REASON).to_pylist())
    assert reasons[""] == 5 + 3  # English sentences + code
    assert reasons["language_not_kept"] + reasons["language_low_score"] == 35
    assert {"lang", "lang_score", REASON, DETAIL} <= set(table.column_names)
    summary = stage.summarize(out)
    assert summary["languages_kept"] == {"en": 5, "null": 3}
    assert sum(summary["languages_dropped"].values()) == 35
