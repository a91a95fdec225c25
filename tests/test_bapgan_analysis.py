"""BAPGAN evaluation kit: VTT export + scorer (hand-made answers), t-SNE, FID wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
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
         metrics: list[dict] | None = None, flags: tuple[bool, float, bool] | None = None) -> str:
    """A run directory as ``boneage`` writes it (run.json, metrics.csv, config.yaml with the model's
    ``flags`` = (age_discriminator, label_smoothing, self_attention)), created at time ``t``."""
    folder = root / exp / rid
    folder.mkdir(parents=True)
    info = {"id": rid, "experiment": exp, "stage": stage, "created_ts": t}
    if source:
        info["source_run"] = source
    (folder / "run.json").write_text(json.dumps(info))
    if flags is not None:
        net = {"age_discriminator": flags[0], "self_attention": flags[2]}
        model = {"class_path": "boneage.systems.bapgan.BAPGANSystem",
                 "init_args": {"label_smoothing": flags[1], "network": {"init_args": net}}}
        (folder / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    if metrics is not None:
        pd.DataFrame(metrics).to_csv(folder / "metrics.csv", index=False)
    return rid


def test_table1_reads_each_experiments_fit_run_and_its_newest_test(tmp_path: Path, capsys) -> None:
    from boneage.analysis.bapgan_table1 import main, table1
    from boneage.runs import RunError

    paper = (True, 0.2, True)
    old = _run(tmp_path, "bapgan_femur", "20260101-000000-aaaa", 1, flags=paper)
    _run(tmp_path, "bapgan_femur", "test-20260101-010000-aaaa", 2, "test", old,
         [{"step": 3, "test/fid_randconv": 50.0}])
    new = _run(tmp_path, "bapgan_femur", "20260102-000000-bbbb", 3, metrics=[{"step": 9, "train/recon_l2": 0.1}],
               flags=paper)
    first = _run(tmp_path, "bapgan_femur", "test-20260102-010000-bbbb", 4, "test", new,
                 [{"step": 9, "test/fid_randconv": 45.0}])
    # a predict run (no true ages, no FID) between and after the test runs: never a test result
    _run(tmp_path, "bapgan_femur", "predict-20260102-020000-bbbb", 5, "predict", new, [{"step": 9}])
    _run(tmp_path, "bapgan_femur", "test-20260102-030000-bbbb", 6, "test", new,
         [{"step": 9, "test/fid_randconv": 40.0}])
    _run(tmp_path, "bapgan_femur", "predict-20260102-040000-bbbb", 7, "predict", new, [{"step": 9}])
    (tmp_path / "bapgan_femur" / "version_0").mkdir()                   # the old layout is not read
    pd.DataFrame([{"test/fid_randconv": 1.0}]).to_csv(tmp_path / "bapgan_femur" / "version_0" / "metrics.csv")
    caae = _run(tmp_path, "bapgan_caae_femur", "20260101-000000-cccc", 1, flags=(False, 0.0, False))
    # an SA run trained with the D_age head switched on: the marks say what the run had, with a note
    _run(tmp_path, "bapgan_caae_sa_femur", "20260101-000000-ffff", 0.5, flags=(True, 0.0, True))
    _run(tmp_path, "bapgan_caae_femur", "test-20260101-010000-cccc", 2, "test", caae,
         [{"step": 3, "test/fid_randconv": 70.0}])

    table = table1(tmp_path).set_index("experiment")
    assert table.loc["bapgan_femur", "FID"] == 40.0 and table.loc["bapgan_femur", "run"] == new
    assert table.loc["bapgan_femur", "scope"] == "test split"
    assert table.loc["bapgan_caae_femur", "FID"] == 70.0
    assert np.isnan(table.loc["bapgan_phalange", "FID"]) and table.loc["bapgan_phalange", "run"] == ""
    marks = table[["D_age", "LS", "SA"]]
    assert marks.loc["bapgan_femur"].tolist() == [True, True, True]
    assert marks.loc["bapgan_caae_femur"].tolist() == [False, False, False]
    assert marks.loc["bapgan_caae_sa_femur"].tolist() == [True, False, True]
    assert "D_age on, LS off, SA on" in table.loc["bapgan_caae_sa_femur", "note"]
    assert table.loc["bapgan_femur", "note"] == "" and table.loc["bapgan_phalange", "D_age"] is None
    # a named fit run, or a named test run, instead of the newest
    assert table1(tmp_path, {"bapgan_femur": old}).set_index("experiment").loc["bapgan_femur", "FID"] == 50.0
    assert table1(tmp_path, {"bapgan_femur": first}).set_index("experiment").loc["bapgan_femur", "FID"] == 45.0
    # the whole-data FID bapgan_eval wrote into the fit run wins over its test-split FID
    summary = tmp_path / "bapgan_femur" / new / "bapgan_eval" / "fid.json"
    summary.parent.mkdir()
    summary.write_text('{"metric": "fid_randconv", "value": 33.0, "scope": "all splits"}')
    (summary.parent / "age.json").write_text('{"accuracy": 0.4, "real_accuracy": 0.75}')
    row = table1(tmp_path).set_index("experiment").loc["bapgan_femur"]
    assert row["FID"] == 33.0 and row["scope"] == "all splits"
    assert row["age acc %"] == pytest.approx(40.0) and row["age acc real %"] == pytest.approx(75.0)
    # a newer fit run not evaluated yet is the default: no FID, and the table says so
    _run(tmp_path, "bapgan_femur", "20260103-000000-dddd", 8)
    assert np.isnan(table1(tmp_path).set_index("experiment").loc["bapgan_femur", "FID"])
    assert main(["--runs-dir", str(tmp_path), "--out", str(tmp_path / "t1.csv")]) == 0
    out = capsys.readouterr().out
    assert "using run bapgan_femur/20260103-000000-dddd (the newest fit run)" in out
    assert "no FID yet" in out and "bapgan_femur" in out.split("no FID yet")[1]
    assert "note: bapgan_caae_sa_femur/20260101-000000-ffff is listed as '+ SA'" in out
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


def test_vtt_takes_the_papers_counts_from_test_then_val_then_train() -> None:
    from boneage.analysis.bapgan_eval import pick_vtt_images

    rng = np.random.default_rng(0)
    # the paper's femur split: 223 / 32 / 62 images; groups drawn in its proportions (42/47/56/130/42)
    groups = {s: rng.choice(5, size=n, p=np.array([42, 47, 56, 130, 42]) / 317)
              for s, n in (("train", 223), ("val", 32), ("test", 62))}
    picks, shortfalls = pick_vtt_images(groups, 5, seed=1)
    assert shortfalls == []
    shown = picks["real"] + picks["synthetic"]
    assert (len(picks["real"]), len(picks["synthetic"])) == (50, 50) and len(set(shown)) == 100
    assert [s for s, _ in shown] == ["test"] * 62 + ["val"] * 32 + ["train"] * 6
    assert (len(picks["progression"]), len(picks["regression"])) == (25, 25)
    assert all(groups[s][i] <= 2 for s, i in picks["progression"])     # two groups (8 years) up
    assert all(groups[s][i] >= 2 for s, i in picks["regression"])
    assert not set(picks["progression"]) & set(picks["regression"])
    assert picks == pick_vtt_images(groups, 5, seed=1)[0] != pick_vtt_images(groups, 5, seed=2)[0]
    # a data set that cannot supply the counts: what there is, in proportion, and a line per shortfall
    small = {"train": np.array([4, 4, 3, 3]), "val": np.array([0]), "test": np.array([1, 0])}
    picks, shortfalls = pick_vtt_images(small, 5, seed=0)
    assert (len(picks["real"]), len(picks["synthetic"])) == (4, 3)
    assert (len(picks["progression"]), len(picks["regression"])) == (3, 4)
    assert len(shortfalls) == 3
    assert shortfalls[0].startswith("realism: 7 images in the pool (test 2+val 1+train 4)")
    assert "exporting 4 + 3" in shortfalls[0] and "progression: 3 pairs" in shortfalls[1]


class _Painter(torch.nn.Module):
    """Stands in for BAPGAN: E keeps the image; G paints it with the brightness of the target group
    (``follow=True``) or returns it unchanged (a generator that ignores the age label)."""

    def __init__(self, follow: bool) -> None:
        super().__init__()
        self.follow = follow
        self.encoder = torch.nn.Identity()

    def generator(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if not self.follow:
            return z
        level = label.argmax(1).float() / 4 * 2 - 1
        return level[:, None, None, None].expand_as(z).contiguous()


def test_age_accuracy_of_generated_images_against_hand_counts() -> None:
    from boneage.analysis.bapgan_age import generated_age_accuracy

    true = torch.tensor([0, 1, 1, 3, 3, 3, 4, 2])
    images = (true.float() / 4 * 2 - 1)[:, None, None, None].expand(-1, 1, 8, 8)
    # an age model reading the brightness: group k -> age 4 k + 2 years
    read_age = lambda x: ((x.mean((1, 2, 3)) + 1) / 2 * 4).round() * 4 + 2  # noqa: E731
    good = generated_age_accuracy(_Painter(True), read_age, images, true, 5, 4.0, batch_size=3)
    assert good["accuracy"] == 1.0 and good["per_target"] == [1.0] * 5 and good["real_accuracy"] == 1.0
    assert good["mean_age"] == pytest.approx([2.0, 6.0, 10.0, 14.0, 18.0])
    # a generator ignoring the label: each render keeps the source's group
    lazy = generated_age_accuracy(_Painter(False), read_age, images, true, 5, 4.0, batch_size=3)
    assert lazy["per_target"] == pytest.approx([1 / 8, 2 / 8, 1 / 8, 3 / 8, 1 / 8])
    assert lazy["accuracy"] == pytest.approx(8 / 40)
    assert np.array(lazy["confusion"])[:, 3].tolist() == [3] * 5   # every target estimated [12-15] 3 times
    # an age model whose predictions fall below 0 years puts them in the first group
    young = generated_age_accuracy(_Painter(True), lambda x: x.mean((1, 2, 3)) * 0 - 1, images, true, 5, 4.0)
    assert young["per_target"] == [1.0, 0.0, 0.0, 0.0, 0.0] and young["real_accuracy"] == pytest.approx(1 / 8)
