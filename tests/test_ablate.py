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
