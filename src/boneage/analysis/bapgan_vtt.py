"""Visual Turing test kit (BAPGAN paper, section 2.3.2, Tables 2 and 3).

Export, for readers, one study (one model on one data set):

- realism: ``n_real`` real and ``n_synthetic`` synthetic images in random order (paper: 50 + 50),
  which each reader labels R (real) or S (synthetic);
- progression / regression: pairs of a real image and its 8-year progressed (regressed) image
  (paper: 25 pairs each), shown as ``pair_XX_A.png`` / ``pair_XX_B.png`` in random order; the
  reader names the progressed (regressed) one, A or B.

Layout written by ``export_study``::

    OUT/readers/            give this folder to the readers
        realism/case_001.png ...          realism_sheet.csv      (case, answer)
        progression/pair_01_A.png ...     progression_sheet.csv  (pair, answer)
        regression/pair_01_A.png ...      regression_sheet.csv   (pair, answer)
    OUT/answer_key/         keep this folder away from the readers
        realism.csv (case, truth R|S, source)  progression.csv / regression.csv (pair, answer A|B, source)

File names carry no information (random order, numbered after shuffling). ``score`` turns the
filled sheets of each reader into the rows of Table 2 (accuracy, R as R, R as S, S as R,
S as S; rates per true class, %) and Table 3 (accuracy over both tasks, progression,
regression; %).

    python -m boneage.analysis.bapgan_vtt score --key OUT/answer_key --reader A=DIR_A --reader B=DIR_B
    python -m boneage.analysis.bapgan_vtt score --experiment bapgan_femur [--run ID] --reader A=DIR_A

The second form scores the study ``bapgan_eval vtt`` exported into the fit run
(``<run>/vtt/answer_key``, newest fit run by default) and writes the tables to ``<run>/vtt/scores``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.phantoms.common import save_gray_png
from boneage.runs import RunError, add_run_arguments, resolve_run

REAL_WORDS = {"r": "R", "real": "R", "s": "S", "synthetic": "S", "syn": "S", "fake": "S"}
PAIR_WORDS = {"a": "A", "b": "B"}
TASKS = ("progression", "regression")


def export_study(out: str | Path, real: Sequence[np.ndarray], synthetic: Sequence[np.ndarray],
                 progression: Sequence[tuple[np.ndarray, np.ndarray]] = (),
                 regression: Sequence[tuple[np.ndarray, np.ndarray]] = (), seed: int = 0,
                 sources: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Write a reader folder and an answer key; images are float arrays ``[H, W]`` in [0, 1].

    ``progression``/``regression`` hold (real, transformed) pairs. ``sources`` optionally names
    each item's origin (keys ``real``, ``synthetic``, ``progression``, ``regression``), kept in
    the answer key only.
    """
    out = Path(out)
    readers, key_dir = out / "readers", out / "answer_key"
    key_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = sources or {}

    items = ([(img, "R", s) for img, s in zip(real, sources.get("real", [""] * len(real)))]
             + [(img, "S", s) for img, s in zip(synthetic, sources.get("synthetic", [""] * len(synthetic)))])
    order = rng.permutation(len(items))
    (readers / "realism").mkdir(parents=True, exist_ok=True)
    key, sheet = [], []
    for k, i in enumerate(order, start=1):
        img, truth, src = items[i]
        case = f"case_{k:03d}"
        save_gray_png(readers / "realism" / f"{case}.png", np.asarray(img))
        key.append({"case": case, "truth": truth, "source": src})
        sheet.append({"case": case, "answer": ""})
    pd.DataFrame(key).to_csv(key_dir / "realism.csv", index=False)
    pd.DataFrame(sheet).to_csv(readers / "realism_sheet.csv", index=False)

    for task, pairs in zip(TASKS, (progression, regression)):
        if not len(pairs):
            continue
        (readers / task).mkdir(parents=True, exist_ok=True)
        src = sources.get(task, [""] * len(pairs))
        key, sheet = [], []
        for k, i in enumerate(rng.permutation(len(pairs)), start=1):
            real_img, fake_img = pairs[i]
            fake_first = bool(rng.integers(2))
            a, b = (fake_img, real_img) if fake_first else (real_img, fake_img)
            save_gray_png(readers / task / f"pair_{k:02d}_A.png", np.asarray(a))
            save_gray_png(readers / task / f"pair_{k:02d}_B.png", np.asarray(b))
            key.append({"pair": f"pair_{k:02d}", "answer": "A" if fake_first else "B", "source": src[i]})
            sheet.append({"pair": f"pair_{k:02d}", "answer": ""})
        pd.DataFrame(key).to_csv(key_dir / f"{task}.csv", index=False)
        pd.DataFrame(sheet).to_csv(readers / f"{task}_sheet.csv", index=False)
    n_pairs = len(progression) + len(regression)
    print(f"wrote {len(items)} realism images and {n_pairs} pairs for readers to {readers}; "
          f"answer key in {key_dir}")
    return out


def _read_answers(path: Path, id_col: str, words: Mapping[str, str], key_ids: Sequence[str]) -> pd.Series:
    """A reader's answers indexed by case/pair id, normalised; clear errors on bad sheets."""
    if not path.is_file():
        raise FileNotFoundError(f"reader sheet not found: {path}")
    sheet = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in (id_col, "answer"):
        if col not in sheet.columns:
            raise ValueError(f"{path}: missing column '{col}' (columns: {list(sheet.columns)})")
    answers = {}
    for row, (item, ans) in enumerate(zip(sheet[id_col], sheet["answer"]), start=2):
        norm = words.get(str(ans).strip().lower())
        if norm is None:
            raise ValueError(f"{path}, line {row}: answer {ans!r} for {item} is not one of "
                             f"{sorted(set(words.values()))}")
        if item in answers:
            raise ValueError(f"{path}, line {row}: {item} answered twice")
        answers[item] = norm
    missing = [i for i in key_ids if i not in answers]
    extra = [i for i in answers if i not in set(key_ids)]
    if missing or extra:
        raise ValueError(f"{path}: sheet does not match the answer key (missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unknown {extra[:5]})")
    return pd.Series(answers)


def score_realism(key_csv: str | Path, sheet: str | Path) -> dict[str, float]:
    """One reader's Table 2 row: accuracy and R/S rates per true class, in %."""
    key = pd.read_csv(key_csv, dtype=str, keep_default_na=False).set_index("case")
    ans = _read_answers(Path(sheet), "case", REAL_WORDS, list(key.index)).reindex(key.index)
    truth = key["truth"]
    row = {"n": len(key), "accuracy": 100.0 * float((ans == truth).mean())}
    for t in ("R", "S"):
        of_t = ans[truth == t]
        for a in ("R", "S"):
            row[f"{t} as {a}"] = 100.0 * float((of_t == a).mean()) if len(of_t) else float("nan")
    return row


def score_pairs(key_csv: str | Path, sheet: str | Path) -> float:
    """Accuracy (%) of picking the transformed image of each pair."""
    key = pd.read_csv(key_csv, dtype=str, keep_default_na=False).set_index("pair")
    ans = _read_answers(Path(sheet), "pair", PAIR_WORDS, list(key.index)).reindex(key.index)
    return 100.0 * float((ans == key["answer"]).mean())


def score(key_dir: str | Path, readers: Mapping[str, str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 2 and 3 rows for every reader: ``readers`` maps a name to a folder of filled sheets."""
    key_dir = Path(key_dir)
    t2, t3 = [], []
    for name, folder in readers.items():
        folder = Path(folder)
        t2.append({"reader": name, **score_realism(key_dir / "realism.csv", folder / "realism_sheet.csv")})
        row: dict[str, float | str] = {"reader": name}
        for task in TASKS:
            if (key_dir / f"{task}.csv").is_file():
                row[task] = score_pairs(key_dir / f"{task}.csv", folder / f"{task}_sheet.csv")
        tasks = [row[t] for t in TASKS if t in row]
        if tasks:   # both tasks have the same number of pairs in the paper: the mean is the accuracy
            row["accuracy"] = float(np.mean(tasks))
            t3.append(row)
    cols3 = ["reader", "accuracy", *[t for t in TASKS if t3 and t in t3[0]]]
    return (pd.DataFrame(t2)[["reader", "n", "accuracy", "R as R", "R as S", "S as R", "S as S"]],
            pd.DataFrame(t3, columns=cols3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boneage.analysis.bapgan_vtt",
                                     description="Score a BAPGAN visual Turing test.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="readers' sheets -> Table 2 and Table 3 rows")
    s.add_argument("--key", type=Path, default=None, help="the study's answer_key folder")
    add_run_arguments(s)
    s.add_argument("--runs_dir", dest="runs_dir", help=argparse.SUPPRESS)  # boneage's spelling
    s.add_argument("--reader", action="append", required=True, metavar="NAME=DIR",
                   help="a reader's name and the folder holding the filled *_sheet.csv files")
    s.add_argument("--label", default="", help="row label, e.g. 'BAPGAN femur'")
    s.add_argument("--out", type=Path, default=None, help="folder for table2.csv / table3.csv")
    args = parser.parse_args(argv)
    if (args.key is None) == (args.experiment is None):
        parser.error("give the study's --key folder, or --experiment [--run ID] of the run it was exported into")
    if args.key is None:
        try:
            run = resolve_run(args.runs_dir, args.experiment, args.run, "fit", verbose=True)
        except RunError as err:
            print(f"bapgan_vtt score: {err}", file=sys.stderr)
            return 2
        args.key = run.path / "vtt" / "answer_key"
        args.out = args.out or run.path / "vtt" / "scores"
        args.label = args.label or run.label
        if not args.key.is_dir():
            print(f"bapgan_vtt score: {run.label} has no visual Turing test ({args.key} missing): export one with "
                  f"`python -m boneage.analysis.bapgan_eval vtt --experiment {run.experiment} --run {run.id}`",
                  file=sys.stderr)
            return 2
    readers = {}
    for item in args.reader:
        if "=" not in item:
            parser.error(f"--reader expects NAME=DIR, got {item!r}")
        name, folder = item.split("=", 1)
        readers[name] = folder
    try:
        t2, t3 = score(args.key, readers)
    except (FileNotFoundError, ValueError) as err:  # a reader's sheet: the message names the file and line
        print(f"bapgan_vtt score: {err}", file=sys.stderr)
        return 2
    for t in (t2, t3):
        if args.label:
            t.insert(0, "study", args.label)
    print("Table 2 (realism, %):\n" + t2.round(1).to_string(index=False))
    if len(t3):
        print("Table 3 (progression/regression, %):\n" + t3.round(1).to_string(index=False))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        t2.to_csv(args.out / "table2.csv", index=False)
        t3.to_csv(args.out / "table3.csv", index=False)
        print(f"wrote {args.out / 'table2.csv'} and {args.out / 'table3.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
