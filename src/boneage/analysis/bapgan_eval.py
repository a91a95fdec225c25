"""BAPGAN evaluation commands on trained experiments (paper sections 2.3 and 3).

    python -m boneage.analysis.bapgan_eval fid     --config experiments/bapgan_femur.yaml [--ckpt best]
    python -m boneage.analysis.bapgan_eval figures --config experiments/bapgan_femur.yaml
    python -m boneage.analysis.bapgan_eval tsne    --dataset femur      (real vs CAAE vs BAPGAN, Fig. 5)
    python -m boneage.analysis.bapgan_eval vtt     --config experiments/bapgan_femur.yaml --out vtt/femur

- ``fid``: FID between every real image of the data set (train + val + test, no augmentation)
  and its age-invariant reconstruction G(E(x), l_true), the paper's Table 1 protocol; writes
  ``lightning_logs/<exp>/bapgan_eval/fid.json`` which ``bapgan_table1`` prefers over test-split
  FIDs. The metric name says which feature extractor produced it.
- ``figures``: test images rendered at all five age groups, and 8-year progression/regression
  pairs, into ``lightning_logs/<exp>/bapgan_eval/``.
- ``tsne``: 42 images per age group: real, CAAE reconstructions and BAPGAN reconstructions of
  the same real images (paper is silent on how the generated images were drawn; chose the
  age-invariant reconstructions of the sampled real images, so the three panels show the same
  identities), perplexity 50, 500 iterations, pixels in [0, 1].
- ``vtt``: the reader folder and answer key of ``bapgan_vtt.export_study`` from the test split:
  50 real + 50 synthetic (renders of 50 *other* test images at a random age group), 25
  progression and 25 regression pairs (8 years = two groups).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from boneage.analysis.bapgan_grids import eight_year_pairs, render_all_ages, save_progression_grid
from boneage.analysis.bapgan_tsne import plot_tsne, sample_per_group, tsne_sets
from boneage.analysis.bapgan_vtt import export_study
from boneage.metrics.fid import to_fid_input
from boneage.systems.gan_losses import age_to_group, smooth_age_labels

SPLITS = ("train", "val", "test")


def load_experiment(config: str | Path, ckpt: str = "best", runs_dir: str = "lightning_logs",
                    overrides: list[str] | None = None):
    """(system in eval mode, set-up datamodule, checkpoint path, experiment dir) of a trained experiment."""
    from boneage.cli import BoneAgeCLI, find_checkpoint

    config = Path(config)
    cli = BoneAgeCLI(args=["--config", str(config), *(overrides or []), "--trainer.logger", "false",
                           "--runs_dir", runs_dir], run=False)
    system, dm = cli.model, cli.datamodule
    exp_dir = Path(runs_dir) / (cli.config.get("experiment") or config.stem)
    path = find_checkpoint(exp_dir / "checkpoints", ckpt) if ckpt in ("best", "last") else ckpt
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    system.load_state_dict(state["state_dict"])
    dm.setup("test")
    return system.eval(), dm, str(path), exp_dir


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


def _extra(args: argparse.Namespace) -> list[str]:
    return [a for c in args.extra_config for a in ("--config", str(c))]


def cmd_fid(args: argparse.Namespace) -> None:
    system, dm, ckpt, exp_dir = load_experiment(args.config, args.ckpt, args.runs_dir, _extra(args))
    name, value, n = whole_dataset_fid(system, dm)
    out = exp_dir / "bapgan_eval" / "fid.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"metric": name, "value": value, "n_images": n, "scope": "all splits",
                               "checkpoint": ckpt}, indent=2) + "\n")
    print(f"{exp_dir.name}: {name} = {value:.2f} over {n} images (real vs age-invariant reconstruction); "
          f"wrote {out}")


def cmd_figures(args: argparse.Namespace) -> None:
    system, dm, _, exp_dir = load_experiment(args.config, args.ckpt, args.runs_dir, _extra(args))
    out = exp_dir / "bapgan_eval"
    x, age = _test_batch(dm, args.n, args.seed)
    groups = age_to_group(age, system.hparams.age_group_years, system.n_groups)
    renders = render_all_ages(system.network, x, system.n_groups, system.hparams.label_smoothing)
    grid = save_progression_grid(x, renders, groups, out / "progression_grid.png", title=exp_dir.name)
    pairs = eight_year_pairs(system.network, x, groups, system.n_groups, system.hparams.label_smoothing)
    paths = [grid]
    for task, items in pairs.items():
        if items:
            real = torch.from_numpy(np.stack([a for a, _ in items]))[:, None] * 2 - 1
            moved = torch.from_numpy(np.stack([b for _, b in items]))[:, None] * 2 - 1
            both = torch.stack([real, moved], dim=1)
            paths.append(save_progression_grid(real, both, torch.zeros(len(real), dtype=torch.long),
                                               out / f"eight_year_{task}.png",
                                               title=f"{exp_dir.name}: real | 8-year {task}"))
    print("wrote " + ", ".join(str(p) for p in paths))


def cmd_tsne(args: argparse.Namespace) -> None:
    configs = {"CAAE": Path(args.experiments) / f"bapgan_caae_{args.dataset}.yaml",
               "BAPGAN": Path(args.experiments) / f"bapgan_{args.dataset}.yaml"}
    sets, groups_of = {}, {}
    real_x = None
    for name, cfg in configs.items():
        system, dm, _, _ = load_experiment(cfg, args.ckpt, args.runs_dir, _extra(args))
        if real_x is None:
            full = ConcatDataset([_plain(dm, s) for s in SPLITS])
            ages = np.concatenate([_plain(dm, s).age.numpy() for s in SPLITS])
            groups = dm.age_group(ages)
            idx = sample_per_group(groups, args.per_group, seed=args.seed, n_groups=dm.n_groups)
            batch = [full[int(i)] for i in idx]
            real_x = torch.stack([b["image"] for b in batch])
            real_age = torch.stack([b["age"] for b in batch])
            g = groups[idx]
            sets["real"] = (((real_x[:, 0] + 1) / 2).clamp(0, 1).numpy(), g)
        with torch.no_grad():
            rec = torch.cat([system.network(real_x[i:i + 64], _labels(system, real_age[i:i + 64]))
                             for i in range(0, len(real_x), 64)])
        sets[name] = (((rec[:, 0] + 1) / 2).clamp(0, 1).numpy(), g)
    emb = tsne_sets(sets, joint=args.joint, perplexity=50.0, max_iter=500, seed=args.seed)
    for k, v in sets.items():
        groups_of[k] = v[1]
    out = Path(args.out or Path(args.runs_dir) / f"bapgan_{args.dataset}" / "bapgan_eval" / "tsne.png")
    plot_tsne(emb, groups_of, out, title=f"t-SNE, {args.dataset} ({args.per_group} per age group)")
    np.savez(out.with_suffix(".npz"), **{f"{k}_xy": v for k, v in emb.items()},
             **{f"{k}_group": v for k, v in groups_of.items()})
    print(f"wrote {out} and {out.with_suffix('.npz')}")


def cmd_vtt(args: argparse.Namespace) -> None:
    system, dm, ckpt, exp_dir = load_experiment(args.config, args.ckpt, args.runs_dir, _extra(args))
    n_groups, ls = system.n_groups, system.hparams.label_smoothing
    x, age = _test_batch(dm, args.n_real * 2, args.seed)
    if len(x) < 2:
        raise ValueError(f"test split of {exp_dir.name} is too small for a visual Turing test")
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
    export_study(args.out, list(real), list(fake), pairs["progression"], pairs["regression"], seed=args.seed,
                 sources={"real": ["real"] * len(real), "synthetic": [f"{exp_dir.name} -> group {int(t)}"
                                                                      for t in target]})
    (Path(args.out) / "answer_key" / "study.json").write_text(json.dumps(
        {"experiment": exp_dir.name, "checkpoint": ckpt, "seed": args.seed}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boneage.analysis.bapgan_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser, config: bool = True) -> None:
        if config:
            p.add_argument("--config", required=True, type=Path, help="experiments/<exp>.yaml")
        p.add_argument("--ckpt", default="best", help="best, last or a checkpoint path")
        p.add_argument("--runs_dir", default="lightning_logs")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--extra_config", action="append", default=[], type=Path,
                       help="more YAML layered over the experiment's (e.g. the scale it was trained at)")

    common(p := sub.add_parser("fid", help="whole-data-set FID (Table 1 protocol)"))
    p.set_defaults(fn=cmd_fid)
    common(p := sub.add_parser("figures", help="progression grid and 8-year pairs"))
    p.add_argument("--n", type=int, default=8, help="test images in the grid")
    p.set_defaults(fn=cmd_figures)
    common(p := sub.add_parser("tsne", help="Fig. 5: real vs CAAE vs BAPGAN"), config=False)
    p.add_argument("--dataset", choices=("femur", "phalange"), required=True)
    p.add_argument("--experiments", default="experiments", help="folder of the experiment YAMLs")
    p.add_argument("--per_group", type=int, default=42)
    p.add_argument("--joint", action="store_true", help="one embedding for the three sets")
    p.add_argument("--out", default=None, help="PNG path (default in the BAPGAN run folder)")
    p.set_defaults(fn=cmd_tsne)
    common(p := sub.add_parser("vtt", help="export a visual Turing test study"))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n_real", type=int, default=50)
    p.add_argument("--n_pairs", type=int, default=25)
    p.set_defaults(fn=cmd_vtt)
    args = parser.parse_args(argv)
    args.fn(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
