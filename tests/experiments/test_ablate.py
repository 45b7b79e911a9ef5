"""genir ablate's pieces that do not need the bundled data: verdicts, configs, tables."""

from __future__ import annotations

import numpy as np
import pytest

from genir.ids.avg import AVGConfig
from genir_experiments.ablate import STUDIES, Scale, Study, _order_verdict, config_for, run


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
    from genir_experiments.ablate import _previous, _write_summary

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
    from test_universal_model import pipeline_data

    import genir_experiments.universal as uni
    from genir_experiments.ablate import Data, study_genius

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


@pytest.mark.slow   # the real towers and a 600-step alignment: about a minute
def test_querypath_study_on_fixture_data(tmp_path, monkeypatch):
    """Issue 4's comparison (patch tokens vs pooled prefix, word pieces vs pooled caption)
    end to end on the fixture data sets with the real towers and a few steps."""
    import genir_experiments.ablate as ablate
    from fixtures import write_fashion_mnist, write_openclipart
    from genir.encoders.cache import EmbeddingCache
    from genir_experiments.ablate import Data, study_querypath

    real_config_for = ablate.config_for

    def small(*args, **kwargs):
        cfg = real_config_for(*args, **kwargs)
        cfg.decoder.d_model, cfg.decoder.num_heads, cfg.train.batch_size = 32, 2, 32
        return cfg

    monkeypatch.setattr(ablate, "config_for", small)

    monkeypatch.setenv("GENIR_FASHION_MNIST_DIR", str(write_fashion_mnist(tmp_path / "f")))
    monkeypatch.setenv("GENIR_OPENCLIPART_DIR", str(write_openclipart(tmp_path / "o")))
    scale = Scale(fmnist_items=None, fmnist_queries=20, fmnist_steps=20, clip_items=None,
                  clip_queries=5, clip_steps=20, tokenizer_steps=10)
    st = study_querypath(Data(scale, EmbeddingCache(tmp_path / "cache"), False), scale)
    settings = [r["setting"] for r in st.rows]
    assert len(settings) == 8 and settings[2] == "Fashion-MNIST patch tokens (16 cells, 128 px)"
    dims = {r["setting"]: r["query_dim"] for r in st.rows}
    assert dims[settings[0]] == 1280 and dims[settings[2]] == 16 * 128   # pooled vs 4x4 grid
    assert dims[settings[6]] == 32 * 128                                  # 32 word pieces
    assert "Fashion-MNIST P@10: patch tokens" in st.verdict and "Openclipart R@10" in st.verdict


def test_pr_curve_by_hand():
    import numpy as np

    from genir_experiments.ablate import _plot_pr, _pr_curve

    hits = np.array([[1, 0, 1, 0], [0, 1, 1, 1]], dtype=bool)
    recall, precision = _pr_curve(hits, np.array([2, 6]))
    assert recall == pytest.approx([(0.5 + 0) / 2, (0.5 + 1 / 6) / 2, (1 + 2 / 6) / 2, (1 + 3 / 6) / 2])
    assert precision == pytest.approx([0.5, 0.5, (2 / 3 + 2 / 3) / 2, (0.5 + 0.75) / 2])
    assert _plot_pr({"a": (recall, precision)}, "t")[:8] == b"\x89PNG\r\n\x1a\n"


def test_tower_study_on_fixture_data(tmp_path, monkeypatch):
    """The IRGen-headline study end to end on the fixture Fashion-MNIST: frozen and tuned
    tower rows, flat k-NN on each, a verdict per setting; the frozen IRGen index is the one
    the identifiers study built in the same run (shared, not rebuilt)."""
    import genir_experiments.ablate as ablate
    from fixtures import write_fashion_mnist
    from genir.encoders.cache import EmbeddingCache
    from genir_experiments.ablate import Data, study_identifiers, study_tower

    real_config_for = ablate.config_for

    def small(*args, **kwargs):
        cfg = real_config_for(*args, **kwargs)
        cfg.decoder.d_model, cfg.decoder.num_heads, cfg.train.batch_size = 32, 2, 32
        cfg.rq.codebook_size = 8
        return cfg

    monkeypatch.setattr(ablate, "config_for", small)
    monkeypatch.setenv("GENIR_FASHION_MNIST_DIR", str(write_fashion_mnist(tmp_path / "f")))
    scale = Scale(fmnist_items=None, fmnist_queries=20, fmnist_steps=20, clip_items=None,
                  clip_queries=5, clip_steps=20, tokenizer_steps=10)
    d = Data(scale, EmbeddingCache(tmp_path / "cache"), False)
    ident = study_identifiers(d, scale)
    built = len(d.built)
    st = study_tower(d, scale)
    assert len(d.built) == built + 2          # tuned irgen and rq; frozen irgen was shared
    irgen = next(r for r in ident.rows if r["setting"] == "irgen")["metrics"]
    assert next(r for r in st.rows if r["setting"] == "frozen tower: irgen")["metrics"] == irgen
    assert [r["setting"] for r in st.rows] == [
        "frozen tower: flat knn", "frozen tower: irgen", "frozen tower: irgen + rerank",
        "tuned tower: flat knn", "tuned tower: irgen",
        "tuned tower: irgen + rerank",
        "tuned tower: rq", "tuned tower: rq + rerank",
        "tuned tower: rq, patch tokens (4 cells)", "tuned tower: rq, patch tokens (4 cells) + rerank"]
    assert d.fmnist.encoder_spec["type"] == "efficientnet-lite0"
    assert d.fmnist_tuned.encoder_spec["type"] == "efficientnet-lite0-tuned"
    assert not np.allclose(d.fmnist.item_emb, d.fmnist_tuned.item_emb, atol=1e-3)
    assert all(0.0 <= v <= 1.0 for r in st.rows for v in r["metrics"].values())
    assert st.rows[-1]["query_dim"] == 4 * 128     # the 2x2 grid at 64 px, PCA to 128
    assert st.verdict.count("the target") == 5 and st.plot


def test_decoder_study_on_fixture_data(tmp_path, monkeypatch):
    """The decoder-size study (issue 6): the default and a larger decoder on the same task,
    each with its weights counted and its queries/s measured; not in the default run."""
    import genir_experiments.ablate as ablate
    from fixtures import write_fashion_mnist
    from genir.encoders.cache import EmbeddingCache
    from genir_experiments.ablate import EXTRA_STUDIES, Data, study_decoder

    assert "decoder" in EXTRA_STUDIES and "decoder" not in STUDIES
    real_config_for = ablate.config_for

    def small(*args, **kwargs):
        cfg = real_config_for(*args, **kwargs)
        if "decoder.d_model" not in kwargs:
            cfg.decoder.d_model, cfg.decoder.num_heads = 32, 2
        cfg.train.batch_size, cfg.rq.codebook_size = 32, 8
        return cfg

    monkeypatch.setattr(ablate, "config_for", small)
    monkeypatch.setattr(ablate, "T5_SMALL", {"decoder.d_model": 48, "decoder.num_layers": 3,
                                             "decoder.num_heads": 4, "decoder.num_prefix": 6})
    monkeypatch.setenv("GENIR_FASHION_MNIST_DIR", str(write_fashion_mnist(tmp_path / "f")))
    scale = Scale(fmnist_items=None, fmnist_queries=20, fmnist_steps=20, clip_items=None,
                  clip_queries=5, clip_steps=20, tokenizer_steps=10)
    st = study_decoder(Data(scale, EmbeddingCache(tmp_path / "cache"), False), scale)
    small_row, big_row = st.rows
    assert small_row["setting"].startswith("default") and "T5-small" in big_row["setting"]
    assert big_row["parameters"] > 2 * small_row["parameters"]
    assert small_row["qps_batch32"] > 0 and big_row["qps_batch32"] > 0
    assert all(0.0 <= v <= 1.0 for r in st.rows for v in r["metrics"].values())
    assert st.verdict.count("P@10") == 1 and st.plot
