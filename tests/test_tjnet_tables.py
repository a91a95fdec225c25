"""TJ-Net tables and the Fig. 6 comparison from run directories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from boneage.analysis import tjnet_tables as tt


def _run(logs, exp, version, rows):
    run = logs / exp / f"version_{version}"
    run.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    return run


def test_tables_read_latest_finished_runs(tmp_path):
    logs = tmp_path / "lightning_logs"
    # a fit run (training accuracy per epoch) and then a test run of the same experiment
    _run(logs, "tjnet_tongji_freeze3", 0, [{"epoch": 0, "step": 9, "train/acc_epoch": 0.5},
                                           {"epoch": 1, "step": 19, "train/acc_epoch": 0.8}])
    _run(logs, "tjnet_tongji_freeze3", 1, [{"epoch": 0, "step": 0, "test/mad_years": 0.4,
                                            "test/rmse_years": 0.6, "test/acc": 0.9}])
    _run(logs, "tjnet_rsna", 0, [{"epoch": 0, "test/mad_years": 0.7, "test/rmse_years": 0.9}])
    _run(logs, "tjnet_rsna", 1, [{"epoch": 0, "test/mad_years": 0.5, "test/rmse_years": 0.6}])
    _run(logs, "tjnet_rsna", 2, [{"epoch": 0, "val/mae": 3.0}])  # unfinished: no test metrics
    t1 = tt.table1(logs).set_index("method")
    assert t1.loc["TJ-Net", "MAD"] == 0.5 and t1.loc["TJ-Net", "RMSE"] == 0.6
    assert t1.loc["TJ-Net", "paper MAD"] == 0.41 and pd.isna(t1.loc["VGG16", "MAD"])
    t2 = tt.table2(logs).set_index("pretrained blocks")
    row = t2.loc["Blocks 1-3"]
    assert (row["MAD"], row["RMSE"], row["Training Accuracy"], row["Test Accuracy"]) == (0.4, 0.6, 0.8, 0.9)
    md = tt.to_markdown(tt.table2(logs), "Table 2")
    assert "| Blocks 1-3 | 0.400 | 0.600 | 0.800 | 0.900 |" in md
    assert "tjnet_tongji_freeze1" in md  # missing runs are named with the command to make them


def test_tables_command_writes_files(tmp_path, capsys):
    logs = tmp_path / "logs"
    _run(logs, "tjnet_rsna_no_cbam", 0, [{"test/mad_years": 0.6, "test/rmse_years": 0.8}])
    assert tt.main(["--logs", str(logs), "--out", str(tmp_path / "out")]) == 0
    ab = pd.read_csv(tmp_path / "out" / "ablations.csv").set_index("method")
    assert ab.loc["TJ-Net without CBAM", "MAD"] == 0.6
    assert (tmp_path / "out" / "tables.md").read_text().count("###") == 3
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
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        tt.run_metrics(tmp_path)


def test_tables_command_composes_fig5_and_fig6(tmp_path):
    import matplotlib.pyplot as plt

    logs = tmp_path / "logs"
    rng = np.random.default_rng(1)
    for exp in ("tjnet_rsna", "tjnet_rsna_no_joint", "tjnet_rsna_no_cbam"):
        run = _run(logs, exp, 0, [{"test/mad_years": 0.5, "test/rmse_years": 0.7}])
        age = rng.uniform(0, 19, 50)
        pd.DataFrame({"age_years": age, "pred_years": age + rng.normal(0, 0.5, 50)}).to_csv(
            run / "predictions.csv", index=False)
        (run / "figures").mkdir()
        plt.imsave(run / "figures" / "block4_activation.png", rng.random((30, 80)))
    tt.main(["--logs", str(logs), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "fig6_error_by_age_group.png").stat().st_size > 5000
    assert (tmp_path / "out" / "fig5_block4_activation_cbam.png").stat().st_size > 5000
