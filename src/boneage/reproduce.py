"""Every paper's CPU miniature, stage by stage, then the report (``make reproduce-mini``).

    python -m boneage.reproduce [--paper tjnet|ct|roi|bapgan|pggan] [--force] [--runs-dir DIR] [--dry-run]

A stage is a few shell commands (phantoms, ``boneage fit``/``test``, an existing ``make`` target)
that make named runs in the runs folder. Each step says what it makes (a fit run whose newest
version finished and was tested, a file); a step whose results are there is skipped, so an
interrupted ``make reproduce-mini`` continues where it stopped. ``--force`` runs every step of the
selected stages again (new runs; the tables read the newest). A failing step stops everything with
one line naming the stage and its log, ``<runs dir>/reproduce/<stage>.log``.

The stages are the miniatures of docs/<paper>.md, cheap stages that settle a claim first
(:data:`ORDER`); docs/reproduce.md lists them with their measured times. Paper is silent on
all of this: the scales are chosen for a 2-core CPU, not for fidelity of the numbers.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from boneage.runs import RUNS_DIR, find_runs

PAPERS = ("roi", "ct", "tjnet", "bapgan", "pggan")
# run order: the cheap stages that settle a claim first, so a run cut short still gives the report most
ORDER = ("roi-demo", "roi-nosex", "ct-hvgg", "tjnet-source", "tjnet-transfer", "bapgan-femur", "tjnet-ablations",
         "pggan-demo", "tjnet-baselines", "ct-members", "tjnet-baselines-big", "bapgan-phalange")
MINI_DATA = "data/mini"


# ------------------------------------------------------------------------------ what a step makes
@dataclass(frozen=True)
class FitAndTest:
    """The newest fit run of ``experiment`` (under ``runs_dir/sub``) finished and has a finished test run."""

    experiment: str
    sub: str = ""

    def present(self, runs_dir: Path) -> bool:
        fits = find_runs(runs_dir / self.sub, self.experiment, stage="fit")
        if not fits or fits[-1].info.get("status") != "finished":
            return False
        return any(t.info.get("status") == "finished" for t in fits[-1].evaluations("test"))

    def __str__(self) -> str:
        return f"{self.sub + '/' if self.sub else ''}{self.experiment} (fit + test)"


@dataclass(frozen=True)
class FitOnly:
    """The newest fit run of ``experiment`` finished and holds ``files`` (GANs: evaluated into the fit run)."""

    experiment: str
    files: tuple[str, ...] = ()
    sub: str = ""

    def present(self, runs_dir: Path) -> bool:
        fits = find_runs(runs_dir / self.sub, self.experiment, stage="fit")
        return (bool(fits) and fits[-1].info.get("status") == "finished"
                and all((fits[-1].path / f).is_file() for f in self.files))

    def __str__(self) -> str:
        return f"{self.sub + '/' if self.sub else ''}{self.experiment} (fit{''.join(', ' + f for f in self.files)})"


@dataclass(frozen=True)
class File:
    """A file (glob pattern) under the runs folder, or, with ``in_runs=False``, under the repository."""

    pattern: str
    in_runs: bool = True

    def present(self, runs_dir: Path) -> bool:
        return bool(glob.glob(str(runs_dir / self.pattern) if self.in_runs else self.pattern))

    def __str__(self) -> str:
        return self.pattern


@dataclass
class Step:
    what: str
    commands: Sequence[str]          # shell commands, run in order by bash in the repository root
    makes: Sequence[FitAndTest | FitOnly | File] = ()

    def present(self, runs_dir: Path) -> bool:
        return bool(self.makes) and all(m.present(runs_dir) for m in self.makes)


@dataclass
class Stage:
    name: str
    paper: str
    what: str
    steps: list[Step] = field(default_factory=list)
    optional: bool = False           # beyond the 2-hour plan (no claim of its own): only with --all

    def present(self, runs_dir: Path) -> bool:
        return all(s.present(runs_dir) for s in self.steps)


class StageFailed(RuntimeError):
    pass


# ------------------------------------------------------------------------------ the miniatures
def _q(args: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def fit_test(config: str, experiment: str, runs: str, args: Sequence[str], sub: str = "",
             ckpt: str = "best") -> Step:
    """``boneage fit`` then ``boneage test`` of the fit run just made (its newest), as mk/tjnet.mk does."""
    where = f"{runs}/{sub}" if sub else runs
    rest = ["--config", config, "--experiment", experiment, "--runs_dir", where, *args]
    return Step(f"{experiment}: fit + test", [_q(["boneage", "fit", *rest]),
                                              _q(["boneage", "test", *rest, "--ckpt_path", ckpt])],
                [FitAndTest(experiment, sub)])


def phantom(generator: str, out: str, args: Sequence[str], marker: str = "labels.csv") -> Step:
    return Step(f"phantom {out}", [_q(["boneage-phantom", generator, "--out", out, *args])],
                [File(f"{out}/{marker}", in_runs=False)])


def _flags(prefix: str, **values) -> list[str]:
    out = []
    for key, value in values.items():
        out += [f"--{prefix}.{key}", value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))]
    return out


def net(**values) -> list[str]:
    return _flags("model.init_args.network.init_args", **values)


def data(**values) -> list[str]:
    return _flags("data.init_args", **values)


def roi_stages(runs: str) -> list[Stage]:
    demo = f"{runs}/roi_demo"
    # the nosex regressor on the same export with roi-demo's own stage-2 flags (make expands them)
    stage2 = "$(ROI_DEMO_STAGE2) --data.init_args.image_size [128,64]"
    return [
        Stage("roi-demo", "roi", "ROI pipeline vs whole image, oracle (make roi-demo)", [Step(
            "make roi-demo", [f"make --no-print-directory roi-demo ROI_DEPS= ROI_DEMO_RUNS={demo}"],
            [FitAndTest("roi_regressor_scinti", "roi_demo"), FitAndTest("roi_resnet50_scinti", "roi_demo"),
             File("roi_demo/roi_demo_summary.json")])]),
        Stage("roi-nosex", "roi", "stage 2 without sex on the same crops (sex input helps?)", [Step(
            "roi_regressor_nosex_scinti on the newest export",
            [f"make --no-print-directory roi-stage2 ROI_DEPS= ROI_RUNS={demo} "
             f"ROI_STAGE2=roi_regressor_nosex_scinti ROI_ARGS='$(ROI_DEMO_COMMON)' ROI2_ARGS='{stage2}'"],
            [FitAndTest("roi_regressor_nosex_scinti", "roi_demo")])]),
    ]


CT_DATA = f"{MINI_DATA}/wholebody_ct"
# docs/ct.md "Short CPU runs": 300 bodies of 240 x 72, 36 x 36 resized, 32 cropped, lr 3e-3, batch 16,
# 20 epochs, random init. The doc's 3-minute cap only for the big members (ct-members): a wall-clock cap
# would make the claims depend on how busy the machine is
CT_COMMON = [*data(csv_path=f"{CT_DATA}/labels.csv", image_size=[36, 36], crop_size=[32, 32], batch_size=16,
                   num_workers=0),
             "--trainer.max_epochs", "20", "--trainer.enable_progress_bar", "false",
             "--model.init_args.optimizer.init_args.lr", "0.003"]
CT_CAP = ["--trainer.max_time", "00:00:03:00"]
CT_VGG = net(width=0.0625, hidden=[32, 16], side_units=16, image_size=32, global_pool_size=1,
             pretrained_path="null")


def ct_stages(runs: str) -> list[Stage]:
    def ct(exp: str, extra: Sequence[str]) -> Step:
        return fit_test(f"experiments/{exp}.yaml", exp, runs, [*CT_COMMON, *extra])

    return [
        Stage("ct-hvgg", "ct", "plain vs hierarchical VGG, upper vs lower body (the claims)", [
            phantom("wholebody_ct", CT_DATA, ["--n", "300", "--seed", "0", "--height", "240", "--width", "72"]),
            ct("ct_vgg16", CT_VGG), ct("ct_hvgg", CT_VGG), ct("ct_hvgg_upper", CT_VGG),
            ct("ct_hvgg_lower", CT_VGG)]),
        Stage("ct-members", "ct", "GoogLeNet, ResNet-18 for ResNet-50, early fusion, global-pool VGG", optional=True,
              steps=[
            ct("ct_googlenet", [*CT_CAP, *net(pretrained_path="null")]),
            ct("ct_resnet50", [*CT_CAP, *net(backbone="resnet18", pretrained_path="null")]),
            ct("ct_early_fusion", [*CT_CAP, *net(backbones=["tv_googlenet", "resnet18"], pretrained_paths=[None, None],
                                                 freeze=[["net.conv1."], ["conv1.", "bn1.", "layer1."]])]),
            ct("ct_hvgg_gap", CT_VGG)]),
    ]


TJ_RSNA = f"{MINI_DATA}/rsna"
TJ_TONGJI = f"{MINI_DATA}/tongji"
# tiny TJ-Net of tests/test_tjnet_system.py's learning test (width 0.25), 80 px (Inception V3's smallest
# input is 75 px), 15 epochs: paper is silent on all of it, chosen for the 2-hour CPU budget
TJ_COMMON = ["--trainer.max_epochs", "15", "--trainer.enable_progress_bar", "false",
             *data(image_size=[80, 80], batch_size=16, num_workers=0)]
TJ_NET = net(width=0.25)
TJ_TONGJI_ARGS = [*TJ_COMMON, *TJ_NET, *data(csv_path=f"{TJ_TONGJI}/labels.csv")]


def tjnet_stages(runs: str) -> list[Stage]:
    rsna = [*TJ_COMMON, *data(data_dir=TJ_RSNA)]
    source = f"$(python -m boneage.systems.tjnet --runs-dir {shlex.quote(runs)} --experiment tjnet_rsna)"
    transfer = [fit_test("experiments/tjnet_tongji.yaml", f"tjnet_tongji_freeze{k}", runs,
                         [*TJ_TONGJI_ARGS, "--model.init_args.freeze_blocks", str(k)]) for k in (1, 2, 3, 4)]
    for step in transfer:  # the source checkpoint is known only once tjnet_rsna has run
        step.commands = [c + f" --model.init_args.init_checkpoint {source}" for c in step.commands]
    ablations = [fit_test("experiments/tjnet_rsna.yaml", f"tjnet_rsna_{name}", runs,
                          [*rsna, *TJ_NET, *net(**{flag: "false"})])
                 for name, flag in (("no_shortcut", "incres_shortcut"), ("no_cbam", "use_cbam"),
                                    ("no_joint", "joint_learning"))]
    baselines = {name: fit_test("experiments/tjnet_rsna_baseline.yaml", f"tjnet_rsna_{name}", runs,
                                [*rsna, *net(backbone=backbone)])
                 for name, backbone in (("resnet50", "resnet50"), ("inception_v3", "inception_v3"),
                                        ("vgg16", "vgg16_bn"), ("inception_v4", "inception_v4"))}
    return [
        Stage("tjnet-source", "tjnet", "phantoms, TJ-Net on the RSNA-like phantom", [
            phantom("rsna", TJ_RSNA, ["--n", "400", "--seed", "0", "--size", "96"], marker="phantom.json"),
            phantom("tongji", TJ_TONGJI, ["--n", "300", "--seed", "1", "--size", "96"]),
            fit_test("experiments/tjnet_rsna.yaml", "tjnet_rsna", runs, [*rsna, *TJ_NET])]),
        Stage("tjnet-transfer", "tjnet", "second hospital: blocks 1..k frozen (k = 1..4) vs from scratch", [
            *transfer,
            fit_test("experiments/tjnet_tongji.yaml", "tjnet_tongji_scratch", runs,
                     [*TJ_TONGJI_ARGS, "--model.init_args.freeze_blocks", "0",
                      "--model.init_args.init_checkpoint", "null"])]),
        Stage("tjnet-ablations", "tjnet", "no IncRes shortcuts / no CBAM / no joint learning", ablations),
        Stage("tjnet-baselines", "tjnet", "ResNet50, Inception V3 (full size)",
              [baselines["resnet50"], baselines["inception_v3"]]),
        # VGG16-BN and Inception V4 cost about 4 and 2 ResNet50 runs on a CPU: beyond the 2 hours
        Stage("tjnet-baselines-big", "tjnet", "VGG16-BN, Inception V4 (full size)",
              [baselines["vgg16"], baselines["inception_v4"]], optional=True),
    ]


BAPGAN_ROWS = ("bapgan_caae", "bapgan_caae_age_ls", "bapgan_caae_sa", "bapgan")
# docs/bapgan.md "Short CPU run": 150 iterations (3 optimizer steps each), 32 x 32, width 0.25
BAPGAN_ARGS = ["--trainer.max_steps", "450", "--trainer.check_val_every_n_epoch", "5",
               "--trainer.enable_progress_bar", "false", *net(image_size=32, width=0.25),
               "--model.init_args.fid_feature_extractor", "randconv",
               *data(image_size=[32, 32], batch_size=32, num_workers=0)]


def bapgan_stages(runs: str) -> list[Stage]:
    stages = []
    for bone, n, seed in (("femur", 317, 0), ("phalange", 2000, 1)):
        csv = f"{MINI_DATA}/{bone}/labels.csv"
        age = f"bapgan_age_regressor_{bone}"
        steps = [
            Step(f"phantom {MINI_DATA}/{bone}",
                 [_q(["boneage-phantom", "bones", "--bone", bone, "--out", f"{MINI_DATA}/{bone}", "--n", str(n),
                      "--seed", str(seed), "--age-distribution", "paper"])],
                 [File(csv, in_runs=False)]),
            fit_test(f"experiments/{age}.yaml", age, runs,
                     ["--trainer.max_epochs", "15", "--trainer.enable_progress_bar", "false",
                      *data(csv_path=csv, image_size=[32, 32], num_workers=0)])]
        for row in BAPGAN_ROWS:
            exp = f"{row}_{bone}"
            steps.append(Step(f"{exp}: fit, whole-data FID, age accuracy", [
                _q(["boneage", "fit", "--config", f"experiments/{exp}.yaml", "--runs_dir", runs,
                    *BAPGAN_ARGS, *data(csv_path=csv)]),
                f"python -m boneage.analysis.bapgan_eval fid --runs-dir {runs} --experiment {exp} --ckpt last",
                f"python -m boneage.analysis.bapgan_eval age --runs-dir {runs} --experiment {exp} --ckpt last "
                f"--age-model {age}",
                f"python -m boneage.analysis.bapgan_table1 --runs-dir {runs} --out {runs}/bapgan_table1.csv"],
                [FitOnly(exp, ("bapgan_eval/fid.json", "bapgan_eval/age.json"))]))
        stages.append(Stage(f"bapgan-{bone}", "bapgan", f"age regressor, the 4 Table 1 rows on the {bone}", steps,
                            optional=bone == "phalange"))
    return stages


def pggan_stages(runs: str) -> list[Stage]:
    return [Stage("pggan-demo", "pggan", "Xception 64 px, PGGAN 4 -> 32 px, latent analysis (make pggan-demo)", [
        Step("make pggan-demo", [f"make --no-print-directory pggan-demo PGGAN_RUNS={runs}"],
             [FitOnly("xception_rsna_demo"), FitOnly("pggan_rsna_demo", ("analysis/lasso.json",))])])]


BUILDERS: dict[str, Callable[[str], list[Stage]]] = {
    "roi": roi_stages, "ct": ct_stages, "tjnet": tjnet_stages, "bapgan": bapgan_stages, "pggan": pggan_stages}


def plan(runs_dir: str = RUNS_DIR, paper: str | None = None, optional: bool = False) -> list[Stage]:
    """The stages of one paper (or of every paper), in :data:`ORDER`; ``optional``: with the optional ones."""
    if paper is not None and paper not in BUILDERS:
        raise ValueError(f"unknown paper '{paper}': choose one of {', '.join(PAPERS)}")
    stages = [s for p in PAPERS if paper in (None, p) for s in BUILDERS[p](runs_dir) if optional or not s.optional]
    return sorted(stages, key=lambda s: ORDER.index(s.name))


# ------------------------------------------------------------------------------ running
def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def run_stages(stages: Sequence[Stage], runs_dir: str | Path, force: bool = False, dry_run: bool = False,
               log=print) -> dict[str, str]:
    """Run (or skip) each stage's steps; returns {stage: ran|skipped|planned}. Raises :class:`StageFailed`."""
    runs = Path(runs_dir)
    logs = runs / "reproduce"
    # `boneage`, `boneage-phantom` and `python` of this environment, whatever the caller's PATH
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    start, result = time.monotonic(), {}
    for k, stage in enumerate(stages, 1):
        head = f"[{k}/{len(stages)}] {stage.name} ({stage.paper}): {stage.what}"
        todo = [s for s in stage.steps if force or not s.present(runs)]
        if not todo:
            log(f"{head}: runs present, skipped (--force / FORCE=1 runs it again)")
            result[stage.name] = "skipped"
            continue
        if dry_run:
            log(f"{head}: would run")
            for step in todo:
                log(f"    {step.what}")
                for cmd in step.commands:
                    log(f"      $ {cmd}")
            result[stage.name] = "planned"
            continue
        logs.mkdir(parents=True, exist_ok=True)
        log_file = logs / f"{stage.name}.log"
        log(f"{head} (elapsed {_clock(time.monotonic() - start)}; log {log_file})")
        t0 = time.monotonic()
        with open(log_file, "a") as out:
            out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {stage.name}\n")
            for i, step in enumerate(todo, 1):
                log(f"    step {i}/{len(todo)}: {step.what} (elapsed {_clock(time.monotonic() - start)})")
                for cmd in step.commands:
                    out.write(f"$ {cmd}\n")
                    out.flush()
                    code = subprocess.call(["bash", "-o", "pipefail", "-c", cmd], stdout=out,
                                           stderr=subprocess.STDOUT, env=env)
                    if code != 0:
                        raise StageFailed(f"stage {stage.name} failed at '{step.what}' (exit {code}): "
                                          f"see {log_file}; `make reproduce-mini` again continues from there")
        seconds = time.monotonic() - t0
        log(f"    {stage.name} done in {_clock(seconds)}")
        # the measured times (docs/reproduce.md's table), with the machine's load while it ran
        times = logs / "times.csv"
        new = not times.exists()
        with open(times, "a") as out:
            if new:
                out.write("stage,finished,seconds,steps_run,load_1min_at_end\n")
            out.write(f"{stage.name},{time.strftime('%Y-%m-%d %H:%M:%S')},{seconds:.0f},{len(todo)},"
                      f"{os.getloadavg()[0]:.1f}\n")
        result[stage.name] = "ran"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boneage.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--paper", choices=PAPERS, help="only this paper's stages")
    parser.add_argument("--force", action="store_true", help="run the stages even when their runs exist")
    parser.add_argument("--runs-dir", "--runs_dir", default=RUNS_DIR)
    parser.add_argument("--all", action="store_true",
                        help="also the optional stages (ct-members, tjnet-baselines-big, bapgan-phalange: "
                             "beyond the 2-hour plan)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (what runs, what is skipped)")
    args = parser.parse_args(argv)
    try:
        run_stages(plan(args.runs_dir, args.paper, args.all), args.runs_dir, args.force, args.dry_run,
                   log=lambda line: print(line, flush=True))
    except StageFailed as err:
        print(f"reproduce: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
