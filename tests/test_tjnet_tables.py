"""TJ-Net tables and the Fig. 6 comparison from run directories."""

from __future__ import annotations

import json
from itertools import count

import numpy as np
import pandas as pd
import pytest

from boneage.analysis import tjnet_tables as tt
from boneage.runs import RunError

_CLOCK = count()


def _run(runs, exp, run_id, rows=None, stage="fit", source=None):
    """A run directory as the CLI leaves it (run.json, metrics.csv), created in this order."""
    run = runs / exp / run_id
    run.mkdir(parents=True)
    info = {"id": run_id, "experiment": exp, "stage": stage, "created_ts": 1e9 + next(_CLOCK)}
    if source is not None:
        info.update(source_run=source.name, source_dir=str(source))
    (run / "run.json").write_text(json.dumps(info))
    if rows is not None:
        pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    return run


def _test(runs, exp, fit, rows, run_id=None):
    return _run(runs, exp, run_id or f"test-{fit.name}-{next(_CLOCK)}", rows, "test", fit)


def test_tables_read_the_newest_fit_runs_newest_test(tmp_path):
    runs = tmp_path / "runs"
    # Table 2: test metrics from the test run, training accuracy from the fit run it evaluated
    fit = _run(runs, "tjnet_tongji_freeze3", "20260101-000000-aaaa",
               [{"epoch": 0, "step": 9, "train/acc_epoch": 0.5}, {"epoch": 1, "step": 19, "train/acc_epoch": 0.8}])
    _test(runs, "tjnet_tongji_freeze3", fit, [{"test/mad_years": 0.4, "test/rmse_years": 0.6, "test/acc": 0.9,
                                                "test/mad_class_years": 0.35, "test/rmse_class_years": 0.7}])
    _run(runs, "tjnet_tongji_freeze3", "predict-20260101-000100-aaaa", None, "predict", fit)
    # Table 1: an older fit run tested later does not count; the newest fit run's newest test does
    old = _run(runs, "tjnet_rsna", "20260101-000000-aaaa", [{"epoch": 0, "val/mae": 9.0}])
    new = _run(runs, "tjnet_rsna", "20260102-000000-bbbb", [{"epoch": 0, "val/mae": 3.0}])
    _test(runs, "tjnet_rsna", new, [{"test/mad_years": 0.7, "test/rmse_years": 0.9}])
    _test(runs, "tjnet_rsna", new, [{"test/mad_years": 0.5, "test/rmse_years": 0.6, "test/mad_class_years": 0.45,
                                     "test/rmse_class_years": 0.65}])
    _test(runs, "tjnet_rsna", old, [{"test/mad_years": 0.1, "test/rmse_years": 0.1}])
    _run(runs, "tjnet_rsna_no_cbam", "20260101-000000-aaaa", [{"epoch": 0, "val/mae": 3.0}])  # not tested
    t1 = tt.table1(runs).set_index("method")
    # MAD/RMSE beside the paper's: from class labels; the expected-age readout's beside them
    row = t1.loc["TJ-Net"]
    assert (row["MAD"], row["RMSE"], row["MAD (expected age)"], row["RMSE (expected age)"]) == (0.45, 0.65, 0.5, 0.6)
    assert row["fit run"] == "tjnet_rsna/20260102-000000-bbbb"
    assert pd.isna(t1.loc["VGG16", "MAD"])
    t2 = tt.table2(runs).set_index("pretrained blocks")
    row = t2.loc["Blocks 1-3"]
    assert (row["MAD"], row["RMSE"], row["Training Accuracy"], row["Test Accuracy"]) == (0.35, 0.7, 0.8, 0.9)
    assert (row["MAD (expected age)"], row["RMSE (expected age)"]) == (0.4, 0.6)
    md = tt.to_markdown(tt.table2(runs), "Table 2")
    assert "| Blocks 1-3 | 0.350 | 0.700 | 0.800 | 0.900 |" in md
    assert "tjnet_tongji_freeze1" in md  # missing runs are named with the command to make them
    md = tt.to_markdown(tt.ablation_table(runs), "Ablations")
    assert "not tested yet: tjnet_rsna_no_cbam/20260101-000000-aaaa" in md


def test_tables_read_the_named_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    old = _run(runs, "tjnet_rsna", "20260101-000000-aaaa", [{"epoch": 0, "val/mae": 9.0}])
    first = _test(runs, "tjnet_rsna", old, [{"test/mad_years": 0.45, "test/rmse_years": 0.5}],
                  "test-20260101-000100-aaaa")
    _test(runs, "tjnet_rsna", old, [{"test/mad_years": 0.55, "test/rmse_years": 0.6}],
          "test-20260101-000200-aaaa")
    new = _run(runs, "tjnet_rsna", "20260102-000000-bbbb", [{"epoch": 0, "val/mae": 3.0}])
    _test(runs, "tjnet_rsna", new, [{"test/mad_years": 0.9, "test/rmse_years": 1.0}])
    out = tmp_path / "out"

    def tjnet_row(*named):
        assert tt.main(["--runs-dir", str(runs), "--out", str(out), *named]) == 0
        return pd.read_csv(out / "table1.csv").set_index("method").loc["TJ-Net"]

    mad = "MAD (expected age)"
    assert tjnet_row()[mad] == 0.9  # default: the newest fit run
    assert tjnet_row("--run", "tjnet_rsna/20260101")[mad] == 0.55  # a fit run: its newest test
    row = tjnet_row("--run", "tjnet_rsna/test-20260101-000100-aaaa")  # a test run itself
    assert (row[mad], row["fit run"]) == (0.45, "tjnet_rsna/20260101-000000-aaaa")
    assert tjnet_row("--run", str(first))[mad] == 0.45  # a run directory
    assert "tjnet_rsna: test run tjnet_rsna/test-20260101-000100-aaaa of fit run" in capsys.readouterr().out
    # a named run that does not exist, or another experiment's name, is one clear line
    assert tt.main(["--runs-dir", str(runs), "--out", str(out), "--run", "tjnet_rsna/2099"]) == 2
    assert "no fit run '2099' in" in capsys.readouterr().err
    assert tt.main(["--runs-dir", str(runs), "--out", str(out), "--run", "ct_hvgg/20260101"]) == 2
    assert "'ct_hvgg' is not an experiment of these tables" in capsys.readouterr().err


def test_tables_command_writes_files(tmp_path, capsys):
    runs = tmp_path / "runs"
    fit = _run(runs, "tjnet_rsna_no_cbam", "20260101-000000-aaaa", [{"epoch": 0, "val/mae": 3.0}])
    _test(runs, "tjnet_rsna_no_cbam", fit, [{"test/mad_years": 0.6, "test/rmse_years": 0.8}])
    assert tt.main(["--runs-dir", str(runs), "--out", str(tmp_path / "out")]) == 0
    ab = pd.read_csv(tmp_path / "out" / "ablations.csv").set_index("method")
    assert ab.loc["TJ-Net without CBAM", "MAD (expected age)"] == 0.6
    assert pd.isna(ab.loc["TJ-Net without CBAM", "MAD"])  # a run from before class-label metrics: n/a
    md = (tmp_path / "out" / "tables.md").read_text()
    assert md.count("###") == 4  # Table 1, ablations, Table 2, Fig. 7
    # which figures compare to the paper's, and what the paper's Inception V3 row was
    assert "from class labels" in md and "the paper's values compare to these" in md
    assert "| Inception V3 (trained here) |" in md and "16bit's online server" in md
    assert "wrote" in capsys.readouterr().out


def test_error_by_age_group_figure_and_bad_columns(tmp_path):
    rng = np.random.default_rng(0)
    age = rng.uniform(0, 19, 200)
    a = pd.DataFrame({"age_years": age, "pred_years": age + rng.normal(0, 0.5, 200)})
    b = pd.DataFrame({"age_years": age, "pred_years": age + rng.normal(0, 1.0, 200)})
    path = tt.error_by_age_group({"joint": a, "no joint": b}, tmp_path / "fig6.png")
    assert path.stat().st_size > 5000
    with pytest.raises(KeyError, match="pred_years"):
        tt.error_by_age_group({"bad": a.drop(columns="pred_years")}, tmp_path / "x.png")
    with pytest.raises(RunError, match="no metrics.csv"):
        tt.run_metrics(tmp_path)


def test_tables_command_composes_fig5_and_fig6(tmp_path):
    import matplotlib.pyplot as plt

    runs = tmp_path / "runs"
    rng = np.random.default_rng(1)
    for exp in ("tjnet_rsna", "tjnet_rsna_no_joint", "tjnet_rsna_no_cbam"):
        fit = _run(runs, exp, "20260101-000000-aaaa", [{"epoch": 0, "val/mae": 3.0}])
        run = _test(runs, exp, fit, [{"test/mad_years": 0.5, "test/rmse_years": 0.7}])
        age = rng.uniform(0, 19, 50)
        pd.DataFrame({"age_years": age, "true_years": age, "pred_years": age + rng.normal(0, 0.5, 50)}).to_csv(
            run / "predictions.csv", index=False)
        (run / "figures").mkdir()
        plt.imsave(run / "figures" / "block4_activation.png", rng.random((30, 80)))
        # a later predict run of the same fit run (no true ages, no figures) changes nothing
        _run(runs, exp, "predict-20260101-000100-aaaa", None, "predict", fit)
    tt.main(["--runs-dir", str(runs), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "fig6_error_by_age_group.png").stat().st_size > 5000
    assert (tmp_path / "out" / "fig5_block4_activation_cbam.png").stat().st_size > 5000


def test_hoyer_sparsity_reference_values():
    assert tt.hoyer_sparsity(np.array([0.0, 0.0, -2.0, 0.0])) == pytest.approx(1.0)  # one non-zero
    assert tt.hoyer_sparsity(np.array([[1.0, -1.0], [1.0, 1.0]])) == pytest.approx(0.0)  # equal magnitudes
    # (sqrt(2) - |w|_1 / |w|_2) / (sqrt(2) - 1) with |w|_1 = 7, |w|_2 = 5; scale-invariant
    ref = (np.sqrt(2) - 7 / 5) / (np.sqrt(2) - 1)
    assert tt.hoyer_sparsity(np.array([3.0, 4.0])) == pytest.approx(ref)
    assert tt.hoyer_sparsity(np.array([30.0, -40.0])) == pytest.approx(ref)
    with pytest.raises(ValueError, match="not all zero"):
        tt.hoyer_sparsity(np.zeros(5))


def _tjnet_fit_run(runs, exp, sex_weights, joint, decoy=None):
    """A tiny TJ-Net fit run (config.yaml + checkpoints) whose block-6 sex-input weights are
    ``sex_weights`` [16, 8] in last.ckpt, tested on last.ckpt; ``decoy`` weights in a best checkpoint."""
    import torch
    import yaml

    from boneage.models.tjnet import tjnet_tiny
    from boneage.systems.tjnet import TJNetSystem

    net_args = {"num_classes": 23, "width": 0.125, "sex_units": 8, "age_hidden": [16, 16], "sex_hidden": 16,
                "joint_learning": joint}
    fit = _run(runs, exp, "20260101-000000-aaaa", [{"epoch": 0, "val/mae": 3.0}])
    (fit / "config.yaml").write_text(yaml.safe_dump({"model": {
        "class_path": "boneage.systems.tjnet.TJNetSystem",
        "init_args": {"network": {"class_path": "boneage.models.tjnet.TJNet", "init_args": net_args},
                      "class_width": 1.0}}}))
    (fit / "checkpoints").mkdir()
    for name, weights in (("last.ckpt", sex_weights), ("best-epoch000-step1.ckpt", decoy)):
        if weights is None:
            continue
        system = TJNetSystem(tjnet_tiny(**{k: v for k, v in net_args.items() if k != "width"}), class_width=1.0)
        with torch.no_grad():
            system.network.age_head[0].weight[:, -8:] = torch.as_tensor(weights, dtype=torch.float32)
        torch.save({"state_dict": system.state_dict()}, fit / "checkpoints" / name)
    test = _test(runs, exp, fit, [{"test/mad_years": 0.5, "test/rmse_years": 0.7}])
    info = json.loads((test / "run.json").read_text())
    (test / "run.json").write_text(json.dumps({**info, "ckpt_path": str(fit / "checkpoints" / "last.ckpt")}))


def test_fig7_sex_input_weights_and_sparsity_from_the_tested_checkpoints(tmp_path):
    runs = tmp_path / "runs"
    one_hot = np.zeros((16, 8))
    one_hot[3, 5] = 0.7
    dense = np.where(np.arange(128).reshape(16, 8) % 2, 0.2, -0.2)
    _tjnet_fit_run(runs, "tjnet_rsna", one_hot, joint=True, decoy=dense)  # the tested checkpoint counts
    _tjnet_fit_run(runs, "tjnet_rsna_no_joint", dense, joint=False)
    assert tt.main(["--runs-dir", str(runs), "--out", str(tmp_path / "out")]) == 0
    fig7 = pd.read_csv(tmp_path / "out" / "fig7_sparsity.csv").set_index("model")
    assert fig7.loc["with joint learning", "Hoyer sparsity"] == pytest.approx(1.0)
    assert fig7.loc["without joint learning", "Hoyer sparsity"] == pytest.approx(0.0, abs=1e-6)
    assert fig7.loc["with joint learning", "checkpoint"].endswith("last.ckpt")
    assert (tmp_path / "out" / "fig7_sex_input_weights.png").stat().st_size > 5000
    assert "| with joint learning | 1.000 |" in (tmp_path / "out" / "tables.md").read_text()
