"""BAPGAN evaluation kit: VTT export + scorer (hand-made answers), t-SNE, FID wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from boneage.analysis import bapgan_vtt as vtt
from boneage.analysis.bapgan_tsne import plot_tsne, sample_per_group, tsne_embed, tsne_sets
from boneage.metrics.fid import create_fid, fid_name, to_fid_input


def _write(path: Path, rows: list[tuple[str, str]], id_col: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=[id_col, "answer"]).to_csv(path, index=False)


def test_vtt_scorer_against_hand_made_answers(tmp_path: Path) -> None:
    key = tmp_path / "answer_key"
    key.mkdir()
    # 4 real (c1-c4), 6 synthetic (c5-c10)
    pd.DataFrame({"case": [f"c{i}" for i in range(1, 11)],
                  "truth": list("RRRR") + list("SSSSSS")}).to_csv(key / "realism.csv", index=False)
    pd.DataFrame({"pair": ["p1", "p2", "p3", "p4"], "answer": list("ABAB")}).to_csv(
        key / "progression.csv", index=False)
    pd.DataFrame({"pair": ["p1", "p2"], "answer": list("BB")}).to_csv(key / "regression.csv", index=False)
    # reader A: real -> R,R,R,S ; synthetic -> R,R,S,S,S,S ; progression 3/4 ; regression 1/2
    answers = ["R", "real", "r", "S", "R", "R", "S", "s", "synthetic", "S"]
    _write(tmp_path / "A" / "realism_sheet.csv", list(zip([f"c{i}" for i in range(1, 11)], answers)), "case")
    _write(tmp_path / "A" / "progression_sheet.csv",
           [("p1", "A"), ("p2", "B"), ("p3", "A"), ("p4", "a")], "pair")
    _write(tmp_path / "A" / "regression_sheet.csv", [("p2", "B"), ("p1", "A")], "pair")
    t2, t3 = vtt.score(key, {"A": tmp_path / "A"})
    row = t2.iloc[0]
    assert row["accuracy"] == pytest.approx(70.0)      # (3 + 4) / 10
    assert row["R as R"] == pytest.approx(75.0) and row["R as S"] == pytest.approx(25.0)
    assert row["S as R"] == pytest.approx(100 / 3) and row["S as S"] == pytest.approx(200 / 3)
    r3 = t3.iloc[0]
    assert r3["progression"] == pytest.approx(75.0)    # p4 answered "a", key B
    assert r3["regression"] == pytest.approx(50.0)     # p1 answered A, key B
    assert r3["accuracy"] == pytest.approx(62.5)


def test_vtt_scorer_errors_name_the_file_and_line(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.mkdir()
    pd.DataFrame({"case": ["c1", "c2"], "truth": ["R", "S"]}).to_csv(key / "realism.csv", index=False)
    _write(tmp_path / "A" / "realism_sheet.csv", [("c1", "R"), ("c2", "maybe")], "case")
    with pytest.raises(ValueError, match=r"realism_sheet.csv, line 3: answer 'maybe'"):
        vtt.score(key, {"A": tmp_path / "A"})
    _write(tmp_path / "B" / "realism_sheet.csv", [("c1", "R")], "case")
    with pytest.raises(ValueError, match=r"missing \['c2'\]"):
        vtt.score(key, {"B": tmp_path / "B"})


def test_vtt_export_hides_the_answers_and_the_key_is_right(tmp_path: Path) -> None:
    real = [np.full((16, 16), 0.2, np.float32)] * 6
    fake = [np.full((16, 16), 0.8, np.float32)] * 6
    pairs = [(np.full((16, 16), 0.2, np.float32), np.full((16, 16), 0.8, np.float32))] * 5
    vtt.export_study(tmp_path, real, fake, progression=pairs, regression=pairs[:3], seed=1)
    key = pd.read_csv(tmp_path / "answer_key" / "realism.csv")
    assert sorted(key.truth) == ["R"] * 6 + ["S"] * 6
    assert list(key.truth) != ["R"] * 6 + ["S"] * 6            # shuffled
    for case, truth in zip(key.case, key.truth):
        value = np.asarray(Image.open(tmp_path / "readers" / "realism" / f"{case}.png")).mean() / 255
        assert (value > 0.5) == (truth == "S")
    pkey = pd.read_csv(tmp_path / "answer_key" / "progression.csv")
    for pair, ans in zip(pkey.pair, pkey.answer):
        a = np.asarray(Image.open(tmp_path / "readers" / "progression" / f"{pair}_A.png")).mean()
        assert (a > 128) == (ans == "A")
    assert not list((tmp_path / "readers").rglob("*key*"))
    # a perfect reader scores 100 everywhere through the CLI
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    sheet = key.rename(columns={"truth": "answer"})[["case", "answer"]]
    sheet.to_csv(perfect / "realism_sheet.csv", index=False)
    for task in ("progression", "regression"):
        pd.read_csv(tmp_path / "answer_key" / f"{task}.csv")[["pair", "answer"]].to_csv(
            perfect / f"{task}_sheet.csv", index=False)
    assert vtt.main(["score", "--key", str(tmp_path / "answer_key"), "--reader", f"P={perfect}",
                     "--out", str(tmp_path / "tables")]) == 0
    t3 = pd.read_csv(tmp_path / "tables" / "table3.csv")
    assert t3.loc[0, "accuracy"] == 100.0 and t3.loc[0, "regression"] == 100.0


def test_tsne_separates_distinct_age_groups(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(5), 50)
    images = np.clip(groups[:, None, None] / 5.0 + rng.normal(0, 0.05, (250, 8, 8)), 0, 1)
    idx = sample_per_group(groups, 42, seed=0)
    assert np.bincount(groups[idx]).tolist() == [42] * 5
    xy = tsne_embed(images[idx], perplexity=50, max_iter=500)
    g = groups[idx]
    centres = np.stack([xy[g == k].mean(0) for k in range(5)])
    spread = max(np.linalg.norm(xy[g == k] - centres[k], axis=1).mean() for k in range(5))
    gaps = [np.linalg.norm(centres[i] - centres[j]) for i in range(5) for j in range(i + 1, 5)]
    assert min(gaps) > 2 * spread
    emb = tsne_sets({"real": (images[idx], g), "copy": (images[idx], g)}, joint=True, max_iter=250)
    assert emb["real"].shape == (210, 2)
    assert plot_tsne(emb, {"real": g, "copy": g}, tmp_path / "tsne.png").is_file()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tsne_embed(images * 2 - 1)


def test_fid_randconv_ranks_sets_and_inception_needs_a_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = torch.rand(64, 1, 32, 32) * 2 - 1
    same = create_fid("randconv")
    same.update(to_fid_input(base[:32]), real=True)
    same.update(to_fid_input(base[32:]), real=False)
    shifted = create_fid("randconv")
    shifted.update(to_fid_input(base[:32]), real=True)
    shifted.update(to_fid_input((base[32:] * 0.3 + 0.5).clamp(-1, 1)), real=False)
    assert same.compute() < shifted.compute()
    assert same.name == "fid_randconv" == fid_name("randconv")
    with pytest.raises(FileNotFoundError, match="pt_inception"):
        create_fid("inception", inception_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="unknown FID feature extractor"):
        create_fid("vgg")


def _run(root: Path, exp: str, rid: str, t: float, stage: str = "fit", source: str | None = None,
         metrics: list[dict] | None = None) -> str:
    """A run directory as ``boneage`` writes it (run.json, metrics.csv), created at time ``t``."""
    folder = root / exp / rid
    folder.mkdir(parents=True)
    info = {"id": rid, "experiment": exp, "stage": stage, "created_ts": t}
    if source:
        info["source_run"] = source
    (folder / "run.json").write_text(json.dumps(info))
    if metrics is not None:
        pd.DataFrame(metrics).to_csv(folder / "metrics.csv", index=False)
    return rid


def test_table1_reads_each_experiments_fit_run_and_its_newest_test(tmp_path: Path, capsys) -> None:
    from boneage.analysis.bapgan_table1 import main, table1
    from boneage.runs import RunError

    old = _run(tmp_path, "bapgan_femur", "20260101-000000-aaaa", 1)
    _run(tmp_path, "bapgan_femur", "test-20260101-010000-aaaa", 2, "test", old,
         [{"step": 3, "test/fid_randconv": 50.0}])
    new = _run(tmp_path, "bapgan_femur", "20260102-000000-bbbb", 3, metrics=[{"step": 9, "train/recon_l2": 0.1}])
    first = _run(tmp_path, "bapgan_femur", "test-20260102-010000-bbbb", 4, "test", new,
                 [{"step": 9, "test/fid_randconv": 45.0}])
    # a predict run (no true ages, no FID) between and after the test runs: never a test result
    _run(tmp_path, "bapgan_femur", "predict-20260102-020000-bbbb", 5, "predict", new, [{"step": 9}])
    _run(tmp_path, "bapgan_femur", "test-20260102-030000-bbbb", 6, "test", new,
         [{"step": 9, "test/fid_randconv": 40.0}])
    _run(tmp_path, "bapgan_femur", "predict-20260102-040000-bbbb", 7, "predict", new, [{"step": 9}])
    (tmp_path / "bapgan_femur" / "version_0").mkdir()                   # the old layout is not read
    pd.DataFrame([{"test/fid_randconv": 1.0}]).to_csv(tmp_path / "bapgan_femur" / "version_0" / "metrics.csv")
    caae = _run(tmp_path, "bapgan_caae_femur", "20260101-000000-cccc", 1)
    _run(tmp_path, "bapgan_caae_femur", "test-20260101-010000-cccc", 2, "test", caae,
         [{"step": 3, "test/fid_randconv": 70.0}])

    table = table1(tmp_path).set_index("experiment")
    assert table.loc["bapgan_femur", "FID"] == 40.0 and table.loc["bapgan_femur", "run"] == new
    assert table.loc["bapgan_femur", "scope"] == "test split"
    assert table.loc["bapgan_caae_femur", "FID"] == 70.0
    assert np.isnan(table.loc["bapgan_phalange", "FID"]) and table.loc["bapgan_phalange", "run"] == ""
    assert table.loc["bapgan_caae_sa_femur", "SA"] and not table.loc["bapgan_caae_sa_femur", "D_age"]
    # a named fit run, or a named test run, instead of the newest
    assert table1(tmp_path, {"bapgan_femur": old}).set_index("experiment").loc["bapgan_femur", "FID"] == 50.0
    assert table1(tmp_path, {"bapgan_femur": first}).set_index("experiment").loc["bapgan_femur", "FID"] == 45.0
    # the whole-data FID bapgan_eval wrote into the fit run wins over its test-split FID
    summary = tmp_path / "bapgan_femur" / new / "bapgan_eval" / "fid.json"
    summary.parent.mkdir()
    summary.write_text('{"metric": "fid_randconv", "value": 33.0, "scope": "all splits"}')
    row = table1(tmp_path).set_index("experiment").loc["bapgan_femur"]
    assert row["FID"] == 33.0 and row["scope"] == "all splits"
    # a newer fit run not evaluated yet is the default: no FID, and the table says so
    _run(tmp_path, "bapgan_femur", "20260103-000000-dddd", 8)
    assert np.isnan(table1(tmp_path).set_index("experiment").loc["bapgan_femur", "FID"])
    assert main(["--runs-dir", str(tmp_path), "--out", str(tmp_path / "t1.csv")]) == 0
    out = capsys.readouterr().out
    assert "using run bapgan_femur/20260103-000000-dddd (the newest fit run)" in out
    assert "no FID yet" in out and "bapgan_femur" in out.split("no FID yet")[1]
    assert main(["--runs-dir", str(tmp_path), "--run", f"bapgan_femur/{new}"]) == 0
    assert "33.0" in capsys.readouterr().out
    # a run that is not there, or FIDs of two feature extractors: one clear line / a refusal
    assert main(["--runs-dir", str(tmp_path), "--run", "bapgan_femur=nope"]) == 2
    assert "no fit run 'nope'" in capsys.readouterr().err
    sa = _run(tmp_path, "bapgan_caae_sa_femur", "20260101-000000-eeee", 1)
    _run(tmp_path, "bapgan_caae_sa_femur", "test-20260101-010000-eeee", 2, "test", sa,
         [{"step": 3, "test/fid_inception": 120.0}])
    with pytest.raises(RunError, match="different FID feature extractors"):
        table1(tmp_path)
