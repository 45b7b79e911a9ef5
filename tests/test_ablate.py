"""genir ablate's pieces that do not need the bundled data: verdicts, configs, tables."""

from __future__ import annotations

import pytest

from genir.ablate import STUDIES, Scale, Study, _order_verdict, config_for, run
from genir.ids.avg import AVGConfig


def study(values: dict[str, float]) -> Study:
    st = Study("t", "paper", ["P@10"])
    st.rows = [{"setting": k, "metrics": {"P@10": v}, "build_s": 1.0} for k, v in values.items()]
    return st


def test_verdict_holds_and_names_the_broken_pairs():
    ok = _order_verdict(study({"a": 0.1, "b": 0.2, "c": 0.3}), "P@10", ["a", "b", "c"], "a<b<c")
    assert "**holds**" in ok and "a 0.100 < b 0.200 < c 0.300" in ok
    bad = _order_verdict(study({"a": 0.1, "b": 0.5, "c": 0.3}), "P@10", ["a", "b", "c"], "a<b<c")
    assert "**does not hold**" in bad and "b 0.500 ≥ c 0.300 (by 0.200)" in bad
    assert "a 0.100" not in bad


def test_config_for_applies_scale_and_dotted_overrides():
    scale = Scale.of(quick=True)
    cfg = config_for("openclipart", scale, tokenizer="avg",
                     **{"rq.align_weight": 0.0, "train.dis_weight": 1.0, "voken_init": True})
    assert type(cfg.rq) is AVGConfig and cfg.rq.align_weight == 0.0
    assert cfg.rq.steps == scale.tokenizer_steps and cfg.train.steps == scale.clip_steps
    assert cfg.train.dis_weight == 1.0 and cfg.voken_init is True
    with pytest.raises(ValueError, match="no field 'nope'"):
        config_for("fashion-mnist", scale, **{"train.nope": 1})


def test_table_has_one_row_per_setting():
    table = study({"x": 0.25, "y": 0.5}).table().splitlines()
    assert table[0] == "| setting | P@10 | build s |" and len(table) == 4
    assert table[2] == "| x | 0.250 | 1 |"


def test_unknown_study_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown studies"):
        run(tmp_path, studies=["nope"])
    assert set(STUDIES) >= {"identifiers", "length", "codebook", "beam", "avg", "fresh"}


def test_summary_keeps_earlier_studies_of_the_same_scale(tmp_path):
    from genir.ablate import _previous, _write_summary

    def entry(value: float) -> dict:
        st = study({"a": value})
        return {"paper": "p", "verdict": f"v{value}", "seconds": 10.0, "rows": st.rows,
                "table": st.table(), "plot": False}

    first = _previous(tmp_path, quick=False)
    first["studies"]["length"] = entry(0.5)
    _write_summary(tmp_path, first, False, Scale.of(False))
    second = _previous(tmp_path, quick=False)             # a later run, another study
    second["studies"]["identifiers"] = entry(0.25)
    _write_summary(tmp_path, second, False, Scale.of(False))
    text = (tmp_path / "README.md").read_text()
    assert text.index("## identifiers") < text.index("## length")   # STUDIES order
    assert "v0.5" in text and "v0.25" in text and "20 s of study time" in text
    assert _previous(tmp_path, quick=True)["studies"] == {}          # other scale: fresh


def test_genius_study_on_fixture_universal_data(monkeypatch):
    """Study 6 (GENIUS Table 4) end to end on the hermetic universal fixture, tiny models."""
    import genir.universal as uni
    from genir.ablate import Data, study_genius
    from test_universal_model import pipeline_data

    data = pipeline_data()

    def tiny(quick: bool = False):
        cfg = uni.IndexConfig(tokenizer="genius")
        cfg.rq.num_levels, cfg.rq.codebook_size = 3, 8
        cfg.rq.steps, cfg.rq.hidden_dim, cfg.rq.modality_codes = 20, 16, "given"
        cfg.decoder.d_model, cfg.decoder.num_layers, cfg.decoder.num_heads = 16, 1, 2
        cfg.train.steps, cfg.train.batch_size, cfg.train.warmup_steps = 30, 32, 5
        return cfg

    monkeypatch.setattr(uni, "default_config", tiny)
    d = Data(Scale.of(True), cache=None, progress=False)   # type: ignore[arg-type]
    d._universal = data
    st = study_genius(d, Scale.of(True))
    settings = [r["setting"] for r in st.rows]
    assert settings == ["full", "full + rerank", "flat knn (no instruction)",
                        "w/o modality decoupling", "w/o query augmentation", "w/o L_mse"]
    assert all(len(r["metrics"]) == len(st.columns) for r in st.rows)
    assert "Mean R@5 over the 6 tasks" in st.verdict and "w/o L_mse" in st.verdict
    assert all(0.0 <= v <= 1.0 for r in st.rows for v in r["metrics"].values())
