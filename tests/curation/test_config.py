import pytest

from curation.config import ConfigError, load_config, parse_config


def base(**kw):
    return {"inputs": ["data/"], "output": "out/", **kw}


def test_minimal_config_defaults():
    cfg = parse_config(base())
    assert cfg.seed == 0 and cfg.default_domain == "web" and cfg.stages == []
    assert cfg.inputs[0].path == "data/" and cfg.inputs[0].domain is None


def test_stage_params_are_validated_into_the_stage_model():
    cfg = parse_config(base(stages=[{"name": "exact_dedup", "lowercase": False}, "url_dedup"]))
    assert [s.name for s in cfg.stages] == ["exact_dedup", "url_dedup"]
    assert cfg.stages[0].params.lowercase is False
    assert cfg.dump()["stages"][0]["lowercase"] is False


@pytest.mark.parametrize("data,message", [
    (base(stages=[{"name": "nope"}]), "unknown stage 'nope'"),
    (base(stages=[{"name": "url_dedup", "treshold": 1}]), "stages.0.treshold: unknown parameter"),
    (base(stages=[{"name": "exact_dedup", "lowercase": "perhaps"}]), "stages.0.lowercase"),
    (base(stages=[{"lowercase": True}]), "a stage is a mapping with a 'name' key"),
    (base(stages=["url_dedup", "url_dedup"]), "appears twice"),
    ({"output": "out/"}, "inputs: Field required"),
    (base(inputs=[]), "inputs"),
    (base(default_domain="Web Pages"), "default_domain"),
    (base(sed=3), "sed: unknown parameter"),
    ([1, 2], "expected a mapping"),
])
def test_bad_configs_fail_with_one_clear_line(data, message):
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_overrides_replace_inputs_and_output():
    cfg = parse_config(base(), inputs=["a.jsonl", {"path": "b/", "domain": "code"}], output="o2")
    assert [i.path for i in cfg.inputs] == ["a.jsonl", "b/"] and cfg.inputs[1].domain == "code"
    assert cfg.output == "o2"


def test_fingerprint_ignores_where_and_tracks_what():
    a = parse_config(base(stages=["url_dedup"]))
    b = parse_config(base(stages=["url_dedup"]), inputs=["elsewhere/"], output="other")
    c = parse_config(base(stages=["url_dedup"], seed=1))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [a\nstages: {")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text("inputs: data/\noutput: out\nstages:\n  - name: exact_dedup\n    strip_punctuation: true\n")
    assert load_config(good).stages[0].params.strip_punctuation is True


def test_stage_columns_are_checked_before_any_work(monkeypatch):
    """A stage that reads a column no earlier stage writes is a config error naming the fix."""
    from curation.io.records import DOCUMENT_SCHEMA
    from curation.stages import STAGES, stage_class
    from curation.stages.heuristics import HeuristicFilter

    available = set(DOCUMENT_SCHEMA.names)
    for name in STAGES:  # the registry's order is a valid pipeline
        assert set(stage_class(name).reads) <= available, name
        available |= set(stage_class(name).writes)
    monkeypatch.setattr(HeuristicFilter, "reads", ("id", "text", "lang"))
    assert parse_config(base(stages=["language", "heuristics"])).stages[1].name == "heuristics"
    with pytest.raises(ConfigError, match=r"stage 'heuristics' reads lang, .* \(add language before it\)"):
        parse_config(base(stages=["heuristics", "language"]))
