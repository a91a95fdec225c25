"""The reproduction report (make report) built from tiny hand-made run directories."""

from __future__ import annotations

import json
import re
from itertools import count

import pandas as pd
import pytest

from boneage.analysis import claims as cl
from boneage.analysis import report

_CLOCK = count()


def _run(runs, exp, metrics, stage="fit", source=None, predictions=None, data_dir=None):
    """A run directory as the CLI leaves it: run.json, config.yaml, metrics.csv (predictions.csv)."""
    rid = f"{'' if stage == 'fit' else stage + '-'}20260101-{next(_CLOCK):06d}-abcd"
    path = runs / exp / rid
    path.mkdir(parents=True)
    info = {"id": rid, "experiment": exp, "stage": stage, "created_ts": 1e9 + next(_CLOCK),
            "created": "2026-01-01T00:00:00", "status": "finished"}
    if source is not None:
        info.update(source_run=source.name, source_dir=str(source))
    (path / "run.json").write_text(json.dumps(info))
    (path / "config.yaml").write_text(json.dumps(
        {"trainer": {"max_epochs": 2}, "data": {"init_args": {"data_dir": str(data_dir or runs),
                                                              "image_size": [32, 32]}}}))
    pd.DataFrame(metrics).to_csv(path / "metrics.csv", index=False)
    if predictions is not None:
        pd.DataFrame(predictions).to_csv(path / "predictions.csv", index=False)
    return path


def _tested(runs, exp, test_metrics, data_dir=None):
    curve = [{"epoch": e, "step": 10 * e, "train/loss": 3.0 - e, "val/loss": 3.5 - e} for e in range(3)]
    fit = _run(runs, exp, curve, data_dir=data_dir)
    preds = {"pred_years": [5.0, 9.0, 14.0, 4.0], "true_years": [6.0, 8.0, 15.0, 3.0], "sex": list("FMFM")}
    return fit, _run(runs, exp, [test_metrics], "test", fit, preds, data_dir)


@pytest.fixture
def tiny_runs(tmp_path):
    """TJ-Net beats no baseline (a failing claim), removing CBAM raises MAD (a holding one), the ROI
    pipeline beats the whole image in a nested runs folder; CT, BAPGAN and PGGAN were not run."""
    runs = tmp_path / "runs"
    phantom = tmp_path / "phantom"
    phantom.mkdir()
    (phantom / "phantom.json").write_text(json.dumps({"generator": "tongji", "n": 40, "units": "months",
                                                      "label_noise_sigma": 6.0, "noise_floor_mae": 4.8}))
    _tested(runs, "tjnet_rsna", {"test/mad_class_years": 0.50, "test/rmse_class_years": 0.6,
                                 "test/mad_years": 0.55, "test/rmse_years": 0.7}, phantom)
    _tested(runs, "tjnet_rsna_vgg16", {"test/mad_class_years": 0.40, "test/rmse_class_years": 0.5})
    _tested(runs, "tjnet_rsna_no_cbam", {"test/mad_class_years": 0.70, "test/rmse_class_years": 0.9})
    _tested(runs / "roi_demo", "roi_regressor_scinti", {"test/mae": 3.0})
    _tested(runs / "roi_demo", "roi_resnet50_scinti", {"test/mae": 5.0})
    return runs


def test_report_has_every_section_and_claim_and_never_hides_a_failure(tiny_runs, tmp_path):
    md_file, html_file, checked = report.write_report(tiny_runs, tmp_path / "reports")
    md, page = md_file.read_text(), html_file.read_text()
    for key in cl.PAPERS:  # every paper's section, linkable from the README and the docs pages
        assert f'id="{key}"' in md and f'<h2 id="{key}">' in page
    empty = tmp_path / "empty"
    empty.mkdir()
    every_claim = [r.claim for r in cl.check_claims(cl.Context(empty))]
    assert len(every_claim) >= 5 * 2
    rows = {r.claim: r for r in checked}
    assert list(rows) == every_claim  # the same rows whatever was run
    for claim in every_claim:
        assert claim in md and claim.replace("'", "&#x27;") in page
    beats = rows["TJ-Net beats its baselines (Table 1, MAD on RSNA)"]
    assert beats.verdict == "does not hold" and "0.500 y vs best baseline 0.400 y (VGG16)" in beats.ours
    assert beats.noise_floor == "0.40 y"  # the phantom's 4.8 months, in years
    assert rows["Removing CBAM raises MAD (section 3.3)"].verdict == "holds"
    assert rows["The ROI pipeline beats the whole image (Table 1, with sex)"].verdict == "holds"
    not_run = rows["Hierarchical VGG beats the fine-tuned plain VGG (Table 1)"]
    assert not_run.verdict == "not run" and "make reproduce-mini PAPER=ct" in not_run.detail
    assert "does not hold" in re.sub(r"<[^>]+>", "", page)
    # self-contained page: figures embedded, nothing fetched
    assert "data:image/png;base64," in page
    assert not re.search(r"""(src|href)=["']https?:""", page)
    assert "tjnet_rsna_vgg16" in md and "(paper 003)" in md  # run ids and the paper's figures beside ours


def test_a_named_run_that_does_not_exist_is_one_clear_line(tiny_runs, tmp_path, capsys):
    assert report.main(["--runs-dir", str(tiny_runs), "--out", str(tmp_path / "r"), "--run", "tjnet_rsna/nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("report: no fit run 'nope'") and "tjnet_rsna" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "report.html").exists()


def test_age_accuracy_a_hair_above_chance_is_not_a_holding_claim():
    # BAPGAN femur miniature: 63 of 310 renders in the target group, 5 groups (chance 20 %)
    assert not cl.above_chance(100 * 63 / 310, 20.0, 310)[0]
    assert cl.above_chance(100 * 90 / 310, 20.0, 310)[0]  # 29 %: p < 0.001
    assert "p = " in cl.above_chance(25.0, 20.0, 310)[1]


def _pggan_verdicts(monkeypatch, generated_ages, regressor_mae, lasso_error):
    """PGGAN's claim rows from analysis results given directly (ages in months; real: 0-228 uniform)."""
    import types

    import numpy as np

    import boneage.runs

    real = np.linspace(0, 228, 200)
    reg = types.SimpleNamespace(label="xception_rsna/r1")
    monkeypatch.setattr(cl, "pggan", lambda ctx: {"gan": None, "analysis": None, "regressor": reg, "json": {
        "regressor_errors": {"test_mae": regressor_mae, "units": "months"},
        "lasso": {"test_abs_error_mean": lasso_error, "test_abs_error_sd": 1.0, "train_abs_error_mean": lasso_error},
        "neighbours": {"age_sd_by_features_mean": 10.0, "age_sd_by_pixels_mean": 20.0}}})
    monkeypatch.setattr(cl, "_shard_ages", lambda analysis: np.asarray(generated_ages, dtype=float))
    monkeypatch.setattr(boneage.runs, "build_data", lambda run, *a: types.SimpleNamespace(
        table=lambda split: pd.DataFrame({"age": real})))
    rows = cl.pggan_claims(types.SimpleNamespace(problems=[]))
    return {r.claim.split(" (")[0]: r.verdict for r in rows}


def test_a_generator_of_mean_age_hands_or_a_blind_regressor_cannot_make_a_pggan_claim_hold(monkeypatch):
    """The demo's regressor (MAE 34 months) does no better than predicting the mean (57 months on these
    ages is its distance): a generator drawing every hand at the mean age has a W1 below that MAE, yet
    its distribution is not realistic; and ages decoded from such a regressor carry no age."""
    import numpy as np

    realistic = "Generated hands have a realistic age distribution"
    decodable = "Age is linearly decodable from the latent space"
    mean_age = _pggan_verdicts(monkeypatch, np.full(100, 114.0), regressor_mae=60.0, lasso_error=5.0)
    assert mean_age[realistic] == cl.FAILS  # W1 57 < MAE 60, but no better than the mean-age generator
    spread = np.linspace(5, 225, 100)
    blind = _pggan_verdicts(monkeypatch, spread, regressor_mae=60.0, lasso_error=5.0)
    assert blind[decodable] == cl.FAILS  # a small LASSO error, but the regressor (60) is no better than the mean (57)
    good = _pggan_verdicts(monkeypatch, spread, regressor_mae=20.0, lasso_error=5.0)
    assert good[realistic] == cl.HOLDS and good[decodable] == cl.HOLDS
