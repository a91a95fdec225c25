"""BAPGAN evaluation commands on trained runs (paper sections 2.3 and 3).

    python -m boneage.analysis.bapgan_eval fid     --experiment bapgan_femur [--run ID] [--ckpt last|best|PATH]
    python -m boneage.analysis.bapgan_eval age     --experiment bapgan_femur [--run ID] [--age-model EXP[/ID]]
    python -m boneage.analysis.bapgan_eval figures --experiment bapgan_femur [--run ID]
    python -m boneage.analysis.bapgan_eval tsne    --dataset femur [--caae EXP[/ID]] [--bapgan EXP[/ID]]
    python -m boneage.analysis.bapgan_eval vtt     --experiment bapgan_femur [--run ID] [--pool test,val,train]

Every command evaluates a fit run (``--run``: an id, a unique prefix or a run directory; default
the experiment's newest fit run, named on stdout) with its checkpoint (``--ckpt``), rebuilding the
system and the data from the run's own ``config.yaml`` (:mod:`boneage.runs`), so a run trained on
another CSV or image size is evaluated on that CSV and at that size. Outputs go into the run's
directory (``<run>/bapgan_eval/``, ``<run>/vtt/``) unless ``--out`` names a place.

Checkpoint: ``last`` by default, the network after the paper's 5.0e4 iterations (the paper
reports the trained model); a run stopped earlier is evaluated with a line saying at which
iteration. ``--ckpt best`` takes the lowest ``val/recon_l2`` instead.

- ``fid``: FID between every real image of the data set (train + val + test, no augmentation)
  and its age-invariant reconstruction G(E(x), l_true), the paper's Table 1 protocol; writes
  ``<run>/bapgan_eval/fid.json`` which ``bapgan_table1`` prefers over test-split FIDs. The
  metric name says which feature extractor produced it.
- ``age``: age accuracy of generated images (:mod:`boneage.analysis.bapgan_age`): every test
  image rendered at every age group, each render's group estimated by an age regressor trained
  on the real training images only (experiment ``bapgan_age_regressor_<bone>``, its best
  checkpoint); writes ``<run>/bapgan_eval/age.json``, which Table 1 shows. The regressor must
  come from the same data class and must not have trained on any of the evaluated images.
- ``figures``: test images rendered at all five age groups, and 8-year progression/regression
  pairs, into ``<run>/bapgan_eval/``.
- ``tsne``: 42 images per age group: real, CAAE reconstructions and BAPGAN reconstructions of
  the same real images (paper is silent on how the generated images were drawn; chose the
  age-invariant reconstructions of the sampled real images, so the three panels show the same
  identities), perplexity 50, 500 iterations, pixels in [0, 1]. The real images come from the
  data of the ``--real`` run (default: the BAPGAN run); the three runs must share data and size.
- ``vtt``: the reader folder and answer key of ``bapgan_vtt.export_study`` with the paper's
  counts: 50 real + 50 synthetic images (a synthetic image renders one of 50 *other* images at a
  random age group) and 25 progression + 25 regression pairs (8 years = two groups; sources in
  groups 0-2 and 2-4, no image in both tasks), into ``<run>/vtt/``. Paper is silent on which
  images: chose the test split first, then validation, then training images (``--pool``), each
  split in a seeded random order, because a femur test split (62) cannot hold 100 different
  images; the answer key names each image's split and file. A data set too small for the counts
  is exported with what it has and a warning naming the shortfall (also in ``study.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from boneage.analysis.bapgan_age import generated_age_accuracy
from boneage.analysis.bapgan_grids import eight_year_pairs, render_all_ages, save_progression_grid
from boneage.analysis.bapgan_tsne import plot_tsne, sample_per_group, tsne_sets
from boneage.analysis.bapgan_vtt import export_study
from boneage.metrics.fid import to_fid_input
from boneage.runs import (
    RUN_FILE,
    RUNS_DIR,
    Run,
    RunError,
    add_run_arguments,
    build_data,
    build_system,
    load_run,
    resolve_run,
)
from boneage.systems.bapgan import check_age_groups
from boneage.systems.gan_losses import age_to_group, smooth_age_labels

SPLITS = ("train", "val", "test")
OUT = "bapgan_eval"
VTT_POOL = ("test", "val", "train")   # where the visual Turing test's images come from, in this order
AGE_MODEL = "bapgan_age_regressor_{bone}"


def fit_run(runs_dir: str, experiment: str, run: str | None) -> Run:
    """The named (default: newest) fit run; a run directory of another stage is refused by name."""
    found = resolve_run(runs_dir, experiment, run, "fit", verbose=True)
    if found.stage != "fit":
        raise RunError(f"{found.label} is a {found.stage} run: name the fit run it evaluated "
                       f"({found.info.get('source_run') or 'see its run.json'})")
    return found


def iteration_note(run: Run, ckpt: str | Path) -> tuple[int | None, str]:
    """(paper iterations in the checkpoint, a line saying it and how many the run was to train)."""
    step = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False).get("global_step")
    if step is None:
        return None, f"checkpoint {ckpt}"
    iteration = int(step) // 3   # three optimizer steps (E/G, D_id, D_img) per iteration
    planned = ((run.config().get("trainer") or {}).get("max_steps") or 0) // 3
    line = f"checkpoint {ckpt}: iteration {iteration}"
    if planned > 0:
        line += f" of {planned}" + ("" if iteration >= planned else
                                    " (short of the run's schedule; the paper reports the model after 5.0e4)")
    return iteration, line


def load(args: argparse.Namespace) -> tuple[Run, object, object, str]:
    """(fit run, system in eval mode, data module set up, checkpoint path) named by the arguments."""
    run = fit_run(args.runs_dir, args.experiment, args.run)
    system, dm, ckpt = load_run(run, args.ckpt, stage="test")
    check_age_groups(system, dm)
    system.iteration_done, line = iteration_note(run, ckpt)
    print(line, flush=True)
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


def _test_batch(dm, n: int, seed: int = 0):
    ds = _plain(dm, "test")
    idx = np.random.default_rng(seed).permutation(len(ds))
    items = [ds[int(i)] for i in idx[:n]]
    return (torch.stack([b["image"] for b in items]), torch.stack([b["age"] for b in items]))


def cmd_fid(args: argparse.Namespace) -> None:
    run, system, dm, ckpt = load(args)
    name, value, n = whole_dataset_fid(system, dm)
    out = _out_dir(args, run, OUT) / "fid.json"
    out.write_text(json.dumps({"metric": name, "value": value, "n_images": n, "scope": "all splits",
                               "experiment": run.experiment, "run": run.id, "checkpoint": ckpt,
                               "iteration": system.iteration_done}, indent=2) + "\n")
    print(f"{run.label}: {name} = {value:.2f} over {n} images (real vs age-invariant reconstruction); "
          f"wrote {out}")


def _same_images_check(gan: Run, gan_dm, age_run: Run, age_dm) -> None:
    """Refuse an age model of another data class, or one that trained on an evaluated image."""
    classes = [(r.config().get("data") or {}).get("class_path") for r in (gan, age_run)]
    if classes[0] != classes[1]:
        raise RunError(f"age model {age_run.label} was trained on {classes[1]}, {gan.label} on {classes[0]}: "
                       "name an age model trained on the same data (--age-model EXP/ID)")
    seen = set(age_dm.table("train")["path"]) | set(age_dm.table("val")["path"])
    shared = [p for p in gan_dm.table("test")["path"] if p in seen]
    if shared:
        raise RunError(f"age model {age_run.label} trained or validated on {len(shared)} of the "
                       f"{len(gan_dm.table('test'))} test images of {gan.label} (e.g. {shared[0]}): train it with the "
                       "GAN's CSV and split settings (data.init_args.csv_path, seed, val_fraction, test_fraction)")


def cmd_age(args: argparse.Namespace) -> None:
    run, system, dm, ckpt = load(args)
    spec = args.age_model or AGE_MODEL.format(bone=getattr(dm, "bone", "femur"))
    age_run = _spec_run(args.runs_dir, spec)
    regressor = build_system(age_run, args.age_model_ckpt)
    if getattr(regressor.network, "use_sex", False):
        raise RunError(f"age model {age_run.label} reads the sex (network use_sex: true); a generated image must "
                       "carry its age alone: train it with model.init_args.network.init_args.use_sex false")
    age_dm = build_data(age_run)
    _same_images_check(run, dm, age_run, age_dm)
    print(f"age model {age_run.label}, checkpoint {regressor.ckpt_path}", flush=True)
    ds = _plain(dm, "test")
    items = [ds[i] for i in range(len(ds))]
    if not items:
        raise RunError(f"the test split of {run.label} is empty: no images to render")
    x = torch.stack([b["image"] for b in items])
    groups = age_to_group(torch.stack([b["age"] for b in items]).float(), system.hparams.age_group_years,
                          system.n_groups)
    result = generated_age_accuracy(system.network, lambda im: regressor(im, None), x, groups, system.n_groups,
                                    system.hparams.age_group_years, system.hparams.label_smoothing,
                                    size=age_dm.image_size)
    names = dm.group_names() if hasattr(dm, "group_names") else [str(k) for k in range(system.n_groups)]
    result.update({"groups": names, "scope": "test split", "experiment": run.experiment, "run": run.id,
                   "checkpoint": ckpt, "iteration": system.iteration_done, "age_model": age_run.label,
                   "age_model_checkpoint": regressor.ckpt_path})
    out = _out_dir(args, run, OUT) / "age.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    per = ", ".join(f"{n} {100 * a:.0f}%" for n, a in zip(names, result["per_target"]))
    print(f"{run.label}: age accuracy of generated images {100 * result['accuracy']:.1f}% ({per}; "
          f"{result['n_images']} test images x {system.n_groups} groups), the age model on the real images "
          f"{100 * result['real_accuracy']:.1f}%; wrote {out}")


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
        check_age_groups(system, dm)
        print(f"{name}: {run.label}, {iteration_note(run, ckpt)[1]}", flush=True)
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


def pick_vtt_images(groups: Mapping[str, np.ndarray], n_groups: int, n_real: int = 50, n_synthetic: int = 50,
                    n_pairs: int = 25, shift: int = 2, pool: Sequence[str] = VTT_POOL,
                    seed: int = 0) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """Which images the visual Turing test shows, as (split, row) per part, and the shortfalls.

    ``groups`` maps a split to the age group of each of its rows. The pool is the splits of
    ``pool`` in that order, each in a seeded random order. ``real`` and ``synthetic`` (the sources
    of the renders) are the pool's first ``n_real + n_synthetic`` images, all different;
    ``progression`` holds the first ``n_pairs`` pool images that can move ``shift`` groups up,
    ``regression`` the first that can move down and are not in ``progression``. When the pool is
    too small, each part gets what there is (real and synthetic in the asked proportion) and a
    shortfall line says so.
    """
    unknown = [s for s in pool if s not in groups]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown} in the visual Turing test pool; splits: {sorted(groups)}")
    rng = np.random.default_rng(seed)
    order = [(split, int(i)) for split in pool for i in rng.permutation(len(groups[split]))]
    group_of = {(split, i): int(groups[split][i]) for split, i in order}
    where = "+".join(f"{s} {len(groups[s])}" for s in pool)
    shortfalls = []
    want = n_real + n_synthetic
    take = order[:want]
    k_real = n_real if len(take) == want else round(len(take) * n_real / max(want, 1))
    picks = {"real": take[:k_real], "synthetic": take[k_real:]}
    if len(take) < want:
        shortfalls.append(f"realism: {len(take)} images in the pool ({where}), the paper shows {n_real} real + "
                          f"{n_synthetic} synthetic; exporting {k_real} + {len(take) - k_real}")
    picks["progression"] = [k for k in order if group_of[k] + shift < n_groups][:n_pairs]
    used = set(picks["progression"])
    picks["regression"] = [k for k in order if group_of[k] - shift >= 0 and k not in used][:n_pairs]
    for task, lo, hi in (("progression", 0, n_groups - 1 - shift), ("regression", shift, n_groups - 1)):
        if len(picks[task]) < n_pairs:
            shortfalls.append(f"{task}: {len(picks[task])} pairs from images in age groups {lo}-{hi} of the pool "
                              f"({where}), the paper shows {n_pairs}")
    return picks, shortfalls


def _images(dm, picks: Sequence[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images, ages, "split: file" names) of (split, row) picks, without augmentation."""
    if not picks:
        return torch.empty(0), torch.empty(0), []
    items = [_plain(dm, split)[i] for split, i in picks]
    names = [f"{split}: {dm.table(split)['path'].iloc[i]}" for split, i in picks]
    return torch.stack([b["image"] for b in items]), torch.stack([b["age"] for b in items]), names


def cmd_vtt(args: argparse.Namespace) -> None:
    run, system, dm, ckpt = load(args)
    n_groups, ls, years = system.n_groups, system.hparams.label_smoothing, system.hparams.age_group_years
    pool = args.pool
    groups = {s: age_to_group(_plain(dm, s).age.float(), years, n_groups).numpy() for s in SPLITS}
    picks, shortfalls = pick_vtt_images(groups, n_groups, args.n_real, args.n_synthetic, args.n_pairs,
                                        pool=pool, seed=args.seed)
    for line in shortfalls:
        print(f"bapgan_eval vtt: warning: {line}", file=sys.stderr)
    if not picks["real"] or not picks["synthetic"]:
        raise RunError(f"{run.label}'s pool ({', '.join(pool)}) holds too few images for a visual Turing test")
    names = [f"[{k * years:g}-{(k + 1) * years - 1:g}]" for k in range(n_groups)]
    x, _, real_src = _images(dm, picks["real"])
    real = ((x[:, 0] + 1) / 2).clamp(0, 1).numpy()
    x, _, syn_src = _images(dm, picks["synthetic"])
    target = torch.randint(0, n_groups, (len(x),), generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        fake = system.network.generator(system.network.encoder(x),
                                        smooth_age_labels(target, n_groups, ls).to(x.dtype))
    fake = ((fake[:, 0] + 1) / 2).clamp(0, 1).numpy()
    sources = {"real": real_src,
               "synthetic": [f"{src} -> {names[int(t)]}" for src, t in zip(syn_src, target)]}
    pairs = {}
    for task, step in (("progression", 2), ("regression", -2)):
        xs, ages, src = _images(dm, picks[task])
        if not len(src):
            pairs[task] = []
            continue
        g = age_to_group(ages.float(), years, n_groups)
        pairs[task] = eight_year_pairs(system.network, xs, g, n_groups, ls)[task]
        sources[task] = [f"{s} -> {names[int(k) + step]}" for s, k in zip(src, g)]
    out = _out_dir(args, run, "vtt")
    export_study(out, list(real), list(fake), pairs["progression"], pairs["regression"], seed=args.seed,
                 sources=sources)
    counts = {k: len(v) for k, v in picks.items()}
    (out / "answer_key" / "study.json").write_text(json.dumps(
        {"experiment": run.experiment, "run": run.id, "checkpoint": ckpt, "iteration": system.iteration_done,
         "seed": args.seed, "pool": list(pool), "counts": counts, "shortfalls": shortfalls}, indent=2) + "\n")


def _pool(text: str) -> tuple[str, ...]:
    pool = tuple(s.strip() for s in text.split(",") if s.strip())
    if not pool or set(pool) - set(SPLITS) or len(set(pool)) < len(pool):
        raise argparse.ArgumentTypeError(f"{text!r}: give splits among {', '.join(SPLITS)}, each once, "
                                         "comma-separated (e.g. test,val,train)")
    return pool


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
        p.add_argument("--ckpt", "--ckpt_path", default="last",
                       help="last (default: the model after its training schedule, as the paper reports it), "
                            "best (lowest val/recon_l2) or a checkpoint path (of each run)")
        p.add_argument("--seed", type=int, default=0)

    common(p := sub.add_parser("fid", help="whole-data-set FID (Table 1 protocol)"))
    p.add_argument("--out", default=None, help="folder for fid.json (default <run>/bapgan_eval)")
    p.set_defaults(fn=cmd_fid)
    common(p := sub.add_parser("age", help="age accuracy of generated images (independent age regressor)"))
    p.add_argument("--age-model", "--age_model", dest="age_model", default=None, metavar="EXP[/RUN]",
                   help="the age regressor's fit run: experiment (newest), experiment/run id, or run directory; "
                        "default bapgan_age_regressor_<bone of the GAN's data>")
    p.add_argument("--age-model-ckpt", "--age_model_ckpt", dest="age_model_ckpt", default="best",
                   help="the age regressor's checkpoint: best (lowest val/mae), last or a path")
    p.add_argument("--out", default=None, help="folder for age.json (default <run>/bapgan_eval)")
    p.set_defaults(fn=cmd_age)
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
    p.add_argument("--n_real", type=int, default=50, help="real images (paper: 50)")
    p.add_argument("--n_synthetic", type=int, default=50, help="synthetic images (paper: 50)")
    p.add_argument("--n_pairs", type=int, default=25, help="progression pairs and regression pairs (paper: 25 each)")
    p.add_argument("--pool", default=VTT_POOL, type=_pool,
                   help="splits the images come from, in order of preference (default test,val,train)")
    p.set_defaults(fn=cmd_vtt)
    args = parser.parse_args(argv)
    from data_modules.base import DataError

    try:
        args.fn(args)
    except (RunError, DataError, FileNotFoundError, ModuleNotFoundError) as err:
        print(f"bapgan_eval {args.cmd}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
