"""BAPGAN evaluation commands on trained runs (paper sections 2.3 and 3).

    python -m boneage.analysis.bapgan_eval fid     --experiment bapgan_femur [--run ID] [--ckpt best]
    python -m boneage.analysis.bapgan_eval figures --experiment bapgan_femur [--run ID]
    python -m boneage.analysis.bapgan_eval tsne    --dataset femur [--caae EXP[/ID]] [--bapgan EXP[/ID]]
    python -m boneage.analysis.bapgan_eval vtt     --experiment bapgan_femur [--run ID]

Every command evaluates a fit run (``--run``: an id, a unique prefix or a run directory; default
the experiment's newest fit run, named on stdout) with its checkpoint (``--ckpt best|last|path``),
rebuilding the system and the data from the run's own ``config.yaml`` (:mod:`boneage.runs`), so a
run trained on another CSV or image size is evaluated on that CSV and at that size. Outputs go
into the run's directory (``<run>/bapgan_eval/``, ``<run>/vtt/``) unless ``--out`` names a place.

- ``fid``: FID between every real image of the data set (train + val + test, no augmentation)
  and its age-invariant reconstruction G(E(x), l_true), the paper's Table 1 protocol; writes
  ``<run>/bapgan_eval/fid.json`` which ``bapgan_table1`` prefers over test-split FIDs. The
  metric name says which feature extractor produced it.
- ``figures``: test images rendered at all five age groups, and 8-year progression/regression
  pairs, into ``<run>/bapgan_eval/``.
- ``tsne``: 42 images per age group: real, CAAE reconstructions and BAPGAN reconstructions of
  the same real images (paper is silent on how the generated images were drawn; chose the
  age-invariant reconstructions of the sampled real images, so the three panels show the same
  identities), perplexity 50, 500 iterations, pixels in [0, 1]. The real images come from the
  data of the ``--real`` run (default: the BAPGAN run); the three runs must share data and size.
- ``vtt``: the reader folder and answer key of ``bapgan_vtt.export_study`` from the test split:
  50 real + 50 synthetic (renders of 50 *other* test images at a random age group), 25
  progression and 25 regression pairs (8 years = two groups), into ``<run>/vtt/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from boneage.analysis.bapgan_grids import eight_year_pairs, render_all_ages, save_progression_grid
from boneage.analysis.bapgan_tsne import plot_tsne, sample_per_group, tsne_sets
from boneage.analysis.bapgan_vtt import export_study
from boneage.metrics.fid import to_fid_input
from boneage.runs import RUN_FILE, RUNS_DIR, Run, RunError, add_run_arguments, build_data, load_run, resolve_run
from boneage.systems.gan_losses import age_to_group, smooth_age_labels

SPLITS = ("train", "val", "test")
OUT = "bapgan_eval"


def fit_run(runs_dir: str, experiment: str, run: str | None) -> Run:
    """The named (default: newest) fit run; a run directory of another stage is refused by name."""
    found = resolve_run(runs_dir, experiment, run, "fit", verbose=True)
    if found.stage != "fit":
        raise RunError(f"{found.label} is a {found.stage} run: name the fit run it evaluated "
                       f"({found.info.get('source_run') or 'see its run.json'})")
    return found


def load(args: argparse.Namespace) -> tuple[Run, object, object, str]:
    """(fit run, system in eval mode, data module set up, checkpoint path) named by the arguments."""
    run = fit_run(args.runs_dir, args.experiment, args.run)
    system, dm, ckpt = load_run(run, args.ckpt, stage="test")
    print(f"checkpoint {ckpt}", flush=True)
    return run, system, dm, ckpt


def _out_dir(args: argparse.Namespace, run: Run, default: str) -> Path:
    out = Path(args.out) if args.out else run.path / default
    out.mkdir(parents=True, exist_ok=True)
    return out


def _plain(dm, split: str):
    """The split's dataset without training augmentation (evaluation sees the images as they are)."""
    return dm.dataset(split, augment=False)


def _labels(system, age: torch.Tensor) -> torch.Tensor:
    return system.labels(age)


@torch.no_grad()
def whole_dataset_fid(system, dm, batch_size: int = 64) -> tuple[str, float, int]:
    """(metric name, FID, images) between all real images and their age-invariant reconstructions."""
    loader = DataLoader(ConcatDataset([_plain(dm, s) for s in SPLITS]), batch_size=batch_size)
    fid = system.fid
    fid.reset()
    n = 0
    from tqdm.auto import tqdm

    for batch in tqdm(loader, desc="FID over the whole data set", leave=False):
        x = batch["image"]
        rec = system.network(x, _labels(system, batch["age"]))
        fid.update(to_fid_input(x), real=True)
        fid.update(to_fid_input(rec), real=False)
        n += len(x)
    return system.fid_name, float(fid.compute()), n


def _test_batch(dm, n: int, seed: int = 0, groups_wanted: tuple[int, ...] | None = None):
    ds = _plain(dm, "test")
    ages = ds.age.numpy()
    groups = dm.age_group(ages)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ds))
    if groups_wanted is not None:
        idx = idx[np.isin(groups[idx], groups_wanted)]
    items = [ds[int(i)] for i in idx[:n]]
    return (torch.stack([b["image"] for b in items]), torch.stack([b["age"] for b in items]))


def cmd_fid(args: argparse.Namespace) -> None:
    run, system, dm, ckpt = load(args)
    name, value, n = whole_dataset_fid(system, dm)
    out = _out_dir(args, run, OUT) / "fid.json"
    out.write_text(json.dumps({"metric": name, "value": value, "n_images": n, "scope": "all splits",
                               "experiment": run.experiment, "run": run.id, "checkpoint": ckpt},
                              indent=2) + "\n")
    print(f"{run.label}: {name} = {value:.2f} over {n} images (real vs age-invariant reconstruction); "
          f"wrote {out}")


def cmd_figures(args: argparse.Namespace) -> None:
    run, system, dm, _ = load(args)
    out = _out_dir(args, run, OUT)
    x, age = _test_batch(dm, args.n, args.seed)
    groups = age_to_group(age, system.hparams.age_group_years, system.n_groups)
    renders = render_all_ages(system.network, x, system.n_groups, system.hparams.label_smoothing)
    grid = save_progression_grid(x, renders, groups, out / "progression_grid.png", title=run.label)
    pairs = eight_year_pairs(system.network, x, groups, system.n_groups, system.hparams.label_smoothing)
    paths = [grid]
    for task, items in pairs.items():
        if items:
            real = torch.from_numpy(np.stack([a for a, _ in items]))[:, None] * 2 - 1
            moved = torch.from_numpy(np.stack([b for _, b in items]))[:, None] * 2 - 1
            both = torch.stack([real, moved], dim=1)
            paths.append(save_progression_grid(real, both, torch.zeros(len(real), dtype=torch.long),
                                               out / f"eight_year_{task}.png",
                                               title=f"{run.label}: real | 8-year {task}"))
    print("wrote " + ", ".join(str(p) for p in paths))


def _spec_run(runs_dir: str, spec: str) -> Run:
    """``EXP``, ``EXP/RUN ID`` or a run directory -> the fit run (newest of EXP when no id)."""
    if (Path(spec) / RUN_FILE).is_file():
        return fit_run(runs_dir, Path(spec).parent.name, spec)
    experiment, _, run = spec.partition("/")
    return fit_run(runs_dir, experiment, run or None)


def _data_key(run: Run) -> tuple:
    data = run.config().get("data") or {}
    init = data.get("init_args") or {}
    return data.get("class_path"), init.get("csv_path"), init.get("image_root"), str(init.get("image_size"))


def cmd_tsne(args: argparse.Namespace) -> None:
    models = {"CAAE": _spec_run(args.runs_dir, args.caae or f"bapgan_caae_{args.dataset}"),
              "BAPGAN": _spec_run(args.runs_dir, args.bapgan or f"bapgan_{args.dataset}")}
    real_run = _spec_run(args.runs_dir, args.real) if args.real else models["BAPGAN"]
    for name, run in models.items():
        if _data_key(run) != _data_key(real_run):
            raise RunError(f"{run.label} ({name}) was trained on other data than the real set's run "
                           f"{real_run.label} (class, csv_path, image_root, image_size: {_data_key(run)} vs "
                           f"{_data_key(real_run)}): name runs trained on the same data and size")
    dm = build_data(real_run)
    dm.setup("test")
    full = ConcatDataset([_plain(dm, s) for s in SPLITS])
    ages = np.concatenate([_plain(dm, s).age.numpy() for s in SPLITS])
    groups = dm.age_group(ages)
    idx = sample_per_group(groups, args.per_group, seed=args.seed, n_groups=dm.n_groups)
    batch = [full[int(i)] for i in idx]
    real_x = torch.stack([b["image"] for b in batch])
    real_age = torch.stack([b["age"] for b in batch])
    g = groups[idx]
    sets = {"real": (((real_x[:, 0] + 1) / 2).clamp(0, 1).numpy(), g)}
    for name, run in models.items():
        system, _, ckpt = load_run(run, args.ckpt, stage=None)
        print(f"{name}: {run.label}, checkpoint {ckpt}", flush=True)
        with torch.no_grad():
            rec = torch.cat([system.network(real_x[i:i + 64], _labels(system, real_age[i:i + 64]))
                             for i in range(0, len(real_x), 64)])
        sets[name] = (((rec[:, 0] + 1) / 2).clamp(0, 1).numpy(), g)
    emb = tsne_sets(sets, joint=args.joint, perplexity=50.0, max_iter=500, seed=args.seed)
    groups_of = {k: v[1] for k, v in sets.items()}
    out = Path(args.out) if args.out else models["BAPGAN"].path / OUT / "tsne.png"
    plot_tsne(emb, groups_of, out, title=f"t-SNE, {args.dataset} ({args.per_group} per age group)")
    np.savez(out.with_suffix(".npz"), **{f"{k}_xy": v for k, v in emb.items()},
             **{f"{k}_group": v for k, v in groups_of.items()})
    (out.with_suffix(".json")).write_text(json.dumps(
        {"real": real_run.label, **{k: r.label for k, r in models.items()}, "ckpt": args.ckpt,
         "per_group": args.per_group, "joint": args.joint, "seed": args.seed}, indent=2) + "\n")
    print(f"wrote {out}, {out.with_suffix('.npz')} and {out.with_suffix('.json')}")


def cmd_vtt(args: argparse.Namespace) -> None:
    run, system, dm, ckpt = load(args)
    n_groups, ls = system.n_groups, system.hparams.label_smoothing
    x, age = _test_batch(dm, args.n_real * 2, args.seed)
    if len(x) < 2:
        raise RunError(f"the test split of {run.label} holds {len(x)} image(s): too few for a visual Turing test")
    half = len(x) // 2
    real = ((x[:half, 0] + 1) / 2).clamp(0, 1).numpy()
    rng = torch.Generator().manual_seed(args.seed)
    target = torch.randint(0, n_groups, (len(x) - half,), generator=rng)
    with torch.no_grad():
        fake = system.network.generator(system.network.encoder(x[half:]),
                                        smooth_age_labels(target, n_groups, ls).to(x.dtype))
    fake = ((fake[:, 0] + 1) / 2).clamp(0, 1).numpy()
    pairs = {}
    sources = {"progression": tuple(range(0, n_groups - 2)), "regression": tuple(range(2, n_groups))}
    for task, wanted in sources.items():
        xs, ages = _test_batch(dm, args.n_pairs, args.seed + 1, wanted)
        groups = age_to_group(ages, system.hparams.age_group_years, n_groups)
        pairs[task] = eight_year_pairs(system.network, xs, groups, n_groups, ls)[task]
    out = _out_dir(args, run, "vtt")
    export_study(out, list(real), list(fake), pairs["progression"], pairs["regression"], seed=args.seed,
                 sources={"real": ["real"] * len(real), "synthetic": [f"{run.label} -> group {int(t)}"
                                                                      for t in target]})
    (out / "answer_key" / "study.json").write_text(json.dumps(
        {"experiment": run.experiment, "run": run.id, "checkpoint": ckpt, "seed": args.seed}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boneage.analysis.bapgan_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser, one_run: bool = True) -> None:
        if one_run:
            add_run_arguments(p, required=True)
        else:
            p.add_argument("--runs-dir", default=RUNS_DIR, help="root of the run directories")
        # the spellings of `boneage`, which boneage.runs' messages suggest
        p.add_argument("--runs_dir", dest="runs_dir", help=argparse.SUPPRESS)
        p.add_argument("--ckpt", "--ckpt_path", default="best", help="best, last or a checkpoint path (of each run)")
        p.add_argument("--seed", type=int, default=0)

    common(p := sub.add_parser("fid", help="whole-data-set FID (Table 1 protocol)"))
    p.add_argument("--out", default=None, help="folder for fid.json (default <run>/bapgan_eval)")
    p.set_defaults(fn=cmd_fid)
    common(p := sub.add_parser("figures", help="progression grid and 8-year pairs"))
    p.add_argument("--n", type=int, default=8, help="test images in the grid")
    p.add_argument("--out", default=None, help="folder for the PNGs (default <run>/bapgan_eval)")
    p.set_defaults(fn=cmd_figures)
    common(p := sub.add_parser("tsne", help="Fig. 5: real vs CAAE vs BAPGAN"), one_run=False)
    p.add_argument("--dataset", choices=("femur", "phalange"), default="femur",
                   help="names the default experiments bapgan_caae_<dataset> and bapgan_<dataset>")
    for name, default in (("caae", "bapgan_caae_<dataset>"), ("bapgan", "bapgan_<dataset>"),
                          ("real", "the BAPGAN run")):
        p.add_argument(f"--{name}", default=None, metavar="EXP[/RUN]",
                       help=f"experiment (newest fit run), experiment/run id, or run directory; default {default}")
    p.add_argument("--per_group", type=int, default=42)
    p.add_argument("--joint", action="store_true", help="one embedding for the three sets")
    p.add_argument("--out", default=None, help="PNG path (default <BAPGAN run>/bapgan_eval/tsne.png)")
    p.set_defaults(fn=cmd_tsne)
    common(p := sub.add_parser("vtt", help="export a visual Turing test study"))
    p.add_argument("--out", default=None, type=Path, help="study folder (default <run>/vtt)")
    p.add_argument("--n_real", type=int, default=50)
    p.add_argument("--n_pairs", type=int, default=25)
    p.set_defaults(fn=cmd_vtt)
    args = parser.parse_args(argv)
    from data_modules.base import DataError

    try:
        args.fn(args)
    except (RunError, DataError, FileNotFoundError) as err:
        print(f"bapgan_eval {args.cmd}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
