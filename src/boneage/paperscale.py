"""Paper scale: every experiment YAML at its own size takes real steps, and the GPU check.

``python -m boneage.paperscale steps [--experiments a,b] [--out DIR]`` (``make paper-steps``) runs
each ``experiments/*.yaml`` through the real CLI (``boneage fit``) unchanged except for:

- batch size 2 (4 for PGGAN, whose discriminator's minibatch-stddev group is 4);
- 2 training batches (``limit_train_batches``, one epoch), 1 validation batch at the epoch end
  (the plateau schedulers need the monitored value), no sanity check, no checkpoint files;
- ``pretrained_path(s)`` and ``init_checkpoint`` null: nothing downloads, and the weight files and runs
  the YAMLs name are the user's own;
- PGGAN: grown to 1024 px with one step of each phase (stabilise at 4 px, then fade and stabilise at
  8, 16, ..., 1024 px: 17 steps), and without its metrics callback (5,000-10,000 generated images:
  an evaluation, not a training step);
- data: a small phantom (``--n``, default 24 images) of the YAML's DataModule rendered at the YAML's
  image size under ``<out>/phantoms`` (the ROI regressors, which read the localizer's exported
  crops, read a scintigraphy phantom at their own size, as tests/test_experiments.py does).

Each experiment runs in its own process (its peak resident memory is its own: ``getrusage``
``ru_maxrss``; on CUDA ``torch.cuda.max_memory_allocated``), one after the other. Measured per
experiment: the time of each training step (batch on the device to step end; the first, which
carries one-time set-up, reported apart), peak memory, parameters, image size, whether every
logged training loss was finite. Written to ``<out>/paper_steps.json`` and ``paper_steps.md``.

``python -m boneage.paperscale gpu-check [--dry] [--out DIR]`` (``make gpu-check [DRY=1]``): per
family a short paper-scale fit in bf16-mixed and 16-mixed with channels_last, a 2-GPU DDP run when
two GPUs are present, ``python -m boneage.bench --device cuda --scale paper``, and one table
(``<out>/gpu_check.md`` and ``.json``). ``--dry``: the same stages at tiny scale on the CPU
(tests/configs' smoke-test overrides, 32-true in place of 16-mixed, the bench's smallest settings).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pytorch_lightning.callbacks import Callback

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"
STEPS_OUT = "bench/paper-scale"
GPU_OUT = "bench/gpu-check"
PGGAN_BATCH = 4  # the discriminator's minibatch-stddev group (experiments/pggan_rsna.yaml)


# --------------------------------------------------------------------------------------------
# Measuring inside the fit
# --------------------------------------------------------------------------------------------
class StepProbe(Callback):
    """Times every training step (on_train_batch_start, batch on the device, to on_train_batch_end;
    CUDA synchronised at both ends), records the logged training losses, the parameter count and
    the input's shape, and writes them to ``out_dir/probe.json`` after every step.

    ``channels_last``: the model and every 4-D tensor of each batch in channels_last memory format
    (no trainer option does this; the GPU check uses it)."""

    def __init__(self, out_dir: str, channels_last: bool = False) -> None:
        self.out_dir = out_dir
        self.channels_last = channels_last
        self.step_ms: list[float] = []
        self.losses: list[dict[str, float]] = []
        self.image_shape: list[int] | None = None
        self.params = 0
        self._t0 = 0.0

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.params = sum(p.numel() for p in pl_module.parameters())
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if isinstance(batch, dict):
            image = batch.get("image")
            if self.image_shape is None and torch.is_tensor(image):
                self.image_shape = list(image.shape)
            if self.channels_last:
                for key, value in batch.items():
                    if torch.is_tensor(value) and value.dim() == 4:
                        batch[key] = value.contiguous(memory_format=torch.channels_last)
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        self.step_ms.append(1e3 * (time.perf_counter() - self._t0))
        found: dict[str, float] = {}
        if isinstance(outputs, dict) and torch.is_tensor(outputs.get("loss")):
            found["loss"] = float(outputs["loss"].detach())
        elif torch.is_tensor(outputs):
            found["loss"] = float(outputs.detach())
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") and "loss" in key and torch.is_tensor(value) and value.numel() == 1:
                found[key] = float(value)
        self.losses.append(found)
        self._write(trainer, pl_module)  # after every step: a run stopped mid-way keeps its timings

    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def _write(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            out = {"step_ms": self.step_ms, "losses": self.losses, "image_shape": self.image_shape,
                   "params": self.params, "world_size": trainer.world_size,
                   "precision": str(trainer.precision)}
            if hasattr(pl_module, "images_shown"):  # PGGAN: how far it grew
                out.update(images_shown=int(pl_module.images_shown), resolution=pl_module.growth.resolution)
            (Path(self.out_dir) / "probe.json").write_text(json.dumps(out))


# --------------------------------------------------------------------------------------------
# Phantoms at the YAML's image size
# --------------------------------------------------------------------------------------------
def _render_rsna(root: Path, n: int, hw: tuple[int, int]) -> dict[str, Any]:
    from boneage.phantoms import rsna

    if not (root / "phantom.json").is_file():
        rsna.render(root, n=n, seed=0, size=max(hw), progress_bar=False)
    return {"data_dir": str(root)}


def _render_tongji(root: Path, n: int, hw: tuple[int, int]) -> dict[str, Any]:
    from boneage.phantoms import tongji

    if not (root / "phantom.json").is_file():
        tongji.render(root, n=n, seed=0, size=max(hw), progress_bar=False)
    return {"csv_path": str(root / tongji.LABEL_FILE)}


def _render_bones(bone: str):
    def render(root: Path, n: int, hw: tuple[int, int]) -> dict[str, Any]:
        from boneage.phantoms import bones

        csv = root / "labels.csv"
        if not csv.is_file():
            csv = bones.render(root, n=n, seed=0, bone=bone, size=max(hw), progress=False)
        return {"csv_path": str(csv), "bone": bone}

    return render


def _render_scintigraphy(root: Path, n: int, hw: tuple[int, int]) -> dict[str, Any]:
    from boneage.phantoms import scintigraphy

    if not (root / "phantom.json").is_file():
        scintigraphy.render(root, n=n, seed=0, height=hw[0], width=hw[1], progress=False)
    return {"csv_path": str(root / scintigraphy.LABEL_FILE)}


def _render_wholebody(root: Path, n: int, hw: tuple[int, int]) -> dict[str, Any]:
    from boneage.phantoms import wholebody_ct

    if not (root / "phantom.json").is_file():
        # whole-body images are tall (the paper's average 3000 x 900): that shape, the YAML's size wide
        side = max(hw)
        wholebody_ct.render(root, n=n, seed=0, height=3 * side, width=side, progress=False)
    return {"csv_path": str(root / wholebody_ct.LABEL_FILE)}


PHANTOMS = {
    "data_modules.rsna.RSNADataModule": _render_rsna,
    "data_modules.tongji.TongjiDataModule": _render_tongji,
    "data_modules.bones.FemurDataModule": _render_bones("femur"),
    "data_modules.bones.PhalangeDataModule": _render_bones("phalange"),
    "data_modules.scintigraphy.ScintigraphyDataModule": _render_scintigraphy,
    "data_modules.wholebody.WholeBodyCTDataModule": _render_wholebody,
}


def load_config(experiment: str, extra: list[Path] = ()) -> dict:
    """The experiment's YAML (with tiny-scale overrides merged when given)."""
    path = EXPERIMENTS / f"{experiment}.yaml"
    if not path.is_file():
        names = " ".join(sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
        raise ValueError(f"no experiment {experiment!r} ({path} does not exist); experiments: {names}")
    config = yaml.safe_load(path.read_text())
    for file in extra:
        _merge(config, yaml.safe_load(Path(file).read_text()) or {})
    return config


def _merge(base: dict, over: dict) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def image_size(config: dict) -> tuple[int, int]:
    """(height, width) the DataModule resizes to: the YAML's image_size, else the class default."""
    data = config["data"]
    size = (data.get("init_args") or {}).get("image_size")
    if size is None:
        import inspect

        module, name = data["class_path"].rsplit(".", 1)
        size = inspect.signature(getattr(importlib.import_module(module), name)).parameters["image_size"].default
    size = [size, size] if isinstance(size, int) else list(size)
    return int(size[0]), int(size[1])


def phantom_args(config: dict, root: Path, n: int) -> dict[str, Any]:
    """Render (once) a phantom of the config's DataModule at its image size under ``root``."""
    class_path = config["data"]["class_path"]
    if class_path not in PHANTOMS:
        raise ValueError(f"data class {class_path} has no phantom; classes with one: {', '.join(sorted(PHANTOMS))}")
    hw = image_size(config)
    folder = root / f"{class_path.rsplit('.', 1)[1]}-{hw[0]}x{hw[1]}-n{n}"
    folder.mkdir(parents=True, exist_ok=True)
    return PHANTOMS[class_path](folder, n, hw)


# --------------------------------------------------------------------------------------------
# One fit, in its own process
# --------------------------------------------------------------------------------------------
def is_pggan(config: dict) -> bool:
    return config["model"]["class_path"].endswith("PGGANSystem")


def pggan_growth_args(config: dict, batch: int) -> list[str]:
    """Overrides growing the YAML's PGGAN to its final resolution with one step of each phase."""
    final = int(config["model"]["init_args"]["generator"]["init_args"]["resolution"])
    start = int(config["model"]["init_args"].get("start_resolution", 4))
    phases = 1 + 2 * (int(math.log2(final)) - int(math.log2(start)))
    return ["--model.init_args.stabilise_images", str(batch), "--model.init_args.fade_images", str(batch),
            "--model.init_args.batch_sizes", json.dumps({start: batch}),
            "--model.init_args.total_images", str(phases * batch),
            "--trainer.callbacks", "[]"]


def _null_weights(config: dict) -> list[str]:
    """``--...pretrained_path(s) null`` for every weights path the model config names, and
    ``init_checkpoint null`` (TJ-Net on Tongji starts from a tjnet_rsna run of the user's own)."""
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            if key in ("pretrained_path", "pretrained_paths", "init_checkpoint") and value is not None:
                out.extend([f"{prefix}.{key}", json.dumps([None] * len(value)) if key == "pretrained_paths"
                            else "null"])
            else:
                walk(value, f"{prefix}.{key}")

    walk(config.get("model"), "--model")
    return out


def fit_args(experiment: str, config: dict, data: dict[str, Any], out_dir: Path, *, steps: int = 2,
             batch: int | None = None, device: str = "cpu", precision: str | None = None,
             channels_last: bool = False, devices: int = 1, tiny: Path | None = None) -> list[str]:
    """The ``boneage fit`` arguments of one paper-scale measurement (see the module docstring)."""
    pggan = is_pggan(config)
    batch = batch or (PGGAN_BATCH if pggan else 2)
    args = ["fit", "--config", str(EXPERIMENTS / f"{experiment}.yaml")]
    if tiny is not None:
        args += ["--config", str(tiny)]
    for key, value in data.items():
        args += [f"--data.init_args.{key}", str(value)]
    args += ["--data.init_args.batch_size", str(batch * devices), "--data.init_args.num_workers", "0"]
    args += _null_weights(config)
    if pggan:
        args += pggan_growth_args(config, batch * devices)
    else:
        args += ["--trainer.limit_train_batches", str(steps), "--trainer.max_epochs", "1",
                 "--trainer.max_steps", "-1", "--trainer.limit_val_batches", "1",
                 "--trainer.check_val_every_n_epoch", "1"]
    if precision:
        args += ["--trainer.precision", precision]
    args += ["--trainer.num_sanity_val_steps", "0", "--trainer.enable_checkpointing", "false",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
             "--trainer.log_every_n_steps", "1", "--trainer.accelerator", "cuda" if device == "cuda" else "cpu",
             "--trainer.devices", str(devices), "--runs_dir", str(out_dir / "runs"),
             "--trainer.callbacks+=boneage.paperscale.StepProbe", f"--trainer.callbacks.out_dir={out_dir}"]
    if devices > 1:
        args += ["--trainer.strategy", "ddp_find_unused_parameters_true" if pggan or "GAN" in
                 config["model"]["class_path"] else "ddp"]
    if channels_last:
        args += ["--trainer.callbacks.channels_last=true"]
    return args


def _child(spec_path: str) -> int:
    """Runs one fit from a spec file (in a fresh process) and writes ``result.json`` beside it."""
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out_dir"])
    os.environ["BONEAGE_CACHE_DIR"] = str(out.parent / "cache")
    os.environ.setdefault("WANDB_MODE", "offline")
    from boneage.cli import main

    started = time.perf_counter()
    error = None
    try:
        main(spec["args"])
    except SystemExit as err:
        error = None if err.code in (0, None) else f"exit {err.code}"
    except Exception as err:  # noqa: BLE001 - reported in the table: what broke at paper scale
        error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    result = {"wall_s": time.perf_counter() - started, "error": error,
              "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "load_avg": os.getloadavg()[0]}  # other users of the machine slow the steps
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    probe = out / "probe.json"
    if probe.is_file():
        result.update(json.loads(probe.read_text()))
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0:  # DDP: rank zero reports
        (out / "result.json").write_text(json.dumps(result))
    return 0 if error is None else 1


def run_fit(name: str, args: list[str], out_dir: Path, timeout: float | None, env: dict | None = None) -> dict:
    """One fit in a child process; its result (or why there is none)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("probe.json", "result.json"):
        (out_dir / stale).unlink(missing_ok=True)
    spec = out_dir / "spec.json"
    spec.write_text(json.dumps({"out_dir": str(out_dir), "args": args}))
    log = out_dir / "log.txt"
    started = time.perf_counter()
    with log.open("w") as fh:
        try:
            proc = subprocess.run([sys.executable, "-m", "boneage.paperscale", "_child", str(spec)], cwd=ROOT,
                                  stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, **(env or {})})
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    result_file = out_dir / "result.json"
    res = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if code is None:
        res["error"] = f"over its {timeout:.0f} s budget"
    elif not res:
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        res["error"] = f"exit {code}: {tail[0][:300]}"
    elif res.get("error") and res["error"].startswith("exit"):
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith(("boneage:", "error:"))]
        if lines:
            res["error"] = lines[-1][:300]
    res.update(name=name, process_s=time.perf_counter() - started, log=str(log))
    return summarise(res)


def summarise(res: dict) -> dict:
    """Step statistics, loss check and the headline figures of one fit's result."""
    steps = res.get("step_ms") or []
    res["steps"] = len(steps)
    res["first_ms"] = steps[0] if steps else None
    res["step_ms_median"] = statistics.median(steps[1:]) if len(steps) > 1 else (steps[0] if steps else None)
    res["last_ms"] = steps[-1] if steps else None
    losses = [v for row in res.get("losses") or [] for v in row.values()]
    res["loss_names"] = sorted({k for row in res.get("losses") or [] for k in row})
    res["losses_finite"] = bool(losses) and all(math.isfinite(v) for v in losses)
    shape = res.get("image_shape")
    res["batch"] = shape[0] if shape else None
    res["image"] = "x".join(str(s) for s in shape[2:]) if shape else None
    res["peak_mib"] = res.get("cuda_peak_mib", res.get("maxrss_mib"))
    return res


# --------------------------------------------------------------------------------------------
# make paper-steps
# --------------------------------------------------------------------------------------------
def experiment_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def machine(device: str = "cpu") -> str:
    if device == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU"


def steps_table(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| experiment | image (HxW) | batch | parameters | steps | first step | ms/step after the first "
             "| peak memory | losses finite | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r.get("step_ms_median")
        note = r.get("error") or ""
        if r.get("growth") and r.get("steps"):
            ms = r.get("last_ms")
            note = note or f"{r['steps']} steps, 4 -> 1024 px; ms/step: the final 1024 px step"
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["name"], r.get("image") or "-", r.get("batch") or "-",
            f"{r['params'] / 1e6:.1f} M" if r.get("params") else "-", r.get("steps", 0),
            f"{r['first_ms'] / 1e3:.1f} s" if r.get("first_ms") else "-",
            f"{ms:,.0f} ms" if ms else "-",
            f"{r['peak_mib']:,.0f} MiB" if r.get("peak_mib") else "-",
            "yes" if r.get("losses_finite") else "NO", note))
    return "\n".join(lines) + "\n"


def paper_steps(experiments: list[str], out: Path, n: int = 24, steps: int = 2, device: str = "cpu",
                timeout: float | None = None) -> list[dict]:
    """Every experiment at its own size, one process each; the table after each one."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    earlier = out / "paper_steps.json"  # rows of experiments not run this time are kept
    kept = [r for r in json.loads(earlier.read_text())["rows"] if r["name"] not in experiments] \
        if earlier.is_file() else []
    header = (f"Paper-scale steps, {time.strftime('%Y-%m-%d')}, {machine(device)}, torch {torch.__version__}: "
              f"each YAML unchanged but batch 2 (PGGAN 4), {steps} training steps (PGGAN: one per phase), "
              f"phantom data ({n} images) at the YAML's size.")
    for name in experiments:
        config = load_config(name)
        print(f"{name}: phantom, then {steps} steps", flush=True)
        data = phantom_args(config, out / "phantoms", n)
        run_dir = out / "runs" / name
        res = run_fit(name, fit_args(name, config, data, run_dir, steps=steps, device=device), run_dir, timeout)
        res["growth"] = is_pggan(config)
        final = config["model"]["init_args"]["generator"]["init_args"]["resolution"] if res["growth"] else None
        res["ok"] = not res.get("error") and res["losses_finite"] and (
            res.get("resolution", 0) == final if res["growth"] else res["steps"] >= steps)
        rows.append(res)
        table = sorted(kept + rows, key=lambda r: r["name"])
        print(f"  {'ok' if res['ok'] else 'FAILED'}: {res['steps']} steps, {res.get('step_ms_median') or 0:.0f} "
              f"ms/step, peak {res.get('peak_mib') or 0:.0f} MiB{'; ' + res['error'] if res.get('error') else ''}",
              flush=True)
        (out / "paper_steps.json").write_text(json.dumps({"header": header, "rows": table}, indent=1))
        (out / "paper_steps.md").write_text(steps_table(table, header))
    print("\n" + steps_table(sorted(kept + rows, key=lambda r: r["name"]), header))
    print(f"wrote {out / 'paper_steps.md'} and {out / 'paper_steps.json'}")
    return rows


# --------------------------------------------------------------------------------------------
# make gpu-check
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GPUFamily:
    name: str
    experiment: str
    tiny: str  # tests/configs overrides for --dry


GPU_FAMILIES = (
    GPUFamily("hand regressor (Xception)", "xception_rsna", "tests/configs/scale/regressor_tiny.yaml"),
    GPUFamily("TJ-Net", "tjnet_rsna", "tests/configs/tjnet_rsna.yaml"),
    GPUFamily("CT (hierarchical VGG)", "ct_hvgg", "tests/configs/ct_hvgg.yaml"),
    GPUFamily("ROI localizer", "roi_localizer_scinti", "tests/configs/roi_localizer_scinti.yaml"),
    GPUFamily("BAPGAN", "bapgan_femur", "tests/configs/bapgan_femur.yaml"),
    GPUFamily("PGGAN", "pggan_rsna", "tests/configs/pggan_rsna.yaml"),
)
# Budgets (seconds) on one H200, so that the whole check holds in 8 minutes (480 s): 12 fits of at most
# 22 s each (process start ~8 s, phantom cache, 6 steps; PGGAN 17 steps up to 1024 px), the 2-GPU DDP
# run 70 s when there are two GPUs, and the bench the rest, at least 110 s. A stage over its budget is
# stopped and reported as such; a fit that would eat into the later stages' time is skipped.
FIT_BUDGET_S = 22
DDP_BUDGET_S = 70
BENCH_MIN_S = 110
TOTAL_BUDGET_S = 480
GPU_STEPS = 6


def _bench(out: Path, dry: bool, timeout: float) -> tuple[dict[str, dict], str | None]:
    """``python -m boneage.bench`` (paper scale on CUDA; when dry its smallest CPU settings, the regressor
    family alone): per family median step ms, framework/plain ratio and syncs per step."""
    args = ["--out", str(out / "bench"), "--breakdown", "never", "--no-data", "--no-channels-last"]
    args += (["--device", "cpu", "--scale", "tiny", "--families", "regressor", "--warmup", "1", "--block", "1",
              "--blocks", "1",
              "--fixed-batches", "1", "--cost-blocks", "0", "--n-images", "32", "--phantom-size", "64",
              "--large-phantom-size", "0"] if dry else
             ["--device", "cuda", "--scale", "paper", "--precision", "bf16-mixed", "--blocks", "3",
              "--cost-blocks", "4"])
    log = out / "bench.log"
    try:
        with log.open("w") as fh:
            proc = subprocess.run([sys.executable, "-m", "boneage.bench", *args], cwd=ROOT, stdout=fh,
                                  stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {}, f"bench over its {timeout:.0f} s budget"
    file = out / "bench" / "results.json"
    if proc.returncode or not file.is_file():
        tail = (log.read_text().strip().splitlines() or ["no output"])[-1]
        return {}, f"bench exit {proc.returncode}: {tail[:200]}"
    res = json.loads(file.read_text())
    by: dict[str, dict] = {}
    for fam in res.get("families", []):
        by[fam["family"]] = {"step_ms": fam.get("framework_ms"), "ratio": fam.get("ratio"),
                             "syncs_per_step": fam.get("syncs_per_step")}  # the bench's flat headline keys
    return by, None


BENCH_NAMES = {"xception_rsna": "regressor", "tjnet_rsna": "tjnet", "roi_localizer_scinti": "roi",
               "bapgan_femur": "bapgan", "pggan_rsna": "pggan"}


def gpu_check(out: Path, dry: bool = False, families: tuple[GPUFamily, ...] = GPU_FAMILIES) -> dict:
    """The GPU check (see the module docstring); ``dry``: the same stages tiny on the CPU."""
    if not dry and not torch.cuda.is_available():
        raise SystemExit("gpu-check: torch sees no GPU; `make gpu-check DRY=1` runs the same stages on the CPU")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    device = "cpu" if dry else "cuda"
    # On the CPU, 16-mixed is not float16 (Lightning turns it into bf16): 32-true takes its place there
    precisions = [("bf16-mixed", "bf16-mixed"), ("16-mixed", "32-true" if dry else "16-mixed")]
    rows: list[dict] = []

    def left() -> float:
        return TOTAL_BUDGET_S - (time.perf_counter() - started)

    two_gpus = not dry and torch.cuda.device_count() >= 2
    reserve = BENCH_MIN_S + (DDP_BUDGET_S if two_gpus else 0)  # seconds kept for the later stages

    for fam in families:
        config = load_config(fam.experiment, [ROOT / fam.tiny] if dry else [])
        data = phantom_args(config, out / "phantoms", 16 if dry else 24)
        for label, precision in precisions:
            budget = FIT_BUDGET_S if not dry else None
            run_dir = out / "runs" / f"{fam.experiment}-{label}"
            if not dry and left() - reserve < FIT_BUDGET_S:
                rows.append({"family": fam.name, "precision": label, "error": "skipped: out of time"})
                continue
            args = fit_args(fam.experiment, config, data, run_dir, steps=2 if dry else GPU_STEPS, device=device,
                            precision=precision, channels_last=True, tiny=ROOT / fam.tiny if dry else None)
            res = run_fit(fam.experiment, args, run_dir, budget)
            res.update(family=fam.name, precision=label if label == precision else f"{label} -> {precision} (CPU)")
            rows.append(res)
            print(f"{fam.name} {label}: {res.get('step_ms_median') or 0:.1f} ms/step"
                  f"{'; ' + res['error'] if res.get('error') else ''}", flush=True)
    ddp = None
    if two_gpus:
        fam = families[0]
        config = load_config(fam.experiment)
        run_dir = out / "runs" / f"{fam.experiment}-ddp2"
        args = fit_args(fam.experiment, config, phantom_args(config, out / "phantoms", 24), run_dir,
                        steps=GPU_STEPS, device=device, precision="bf16-mixed", channels_last=True, devices=2)
        ddp = run_fit(fam.experiment, args, run_dir, DDP_BUDGET_S)
        ddp.update(family=f"{fam.name}, DDP 2 GPUs", precision="bf16-mixed")
    bench, bench_error = _bench(out, dry, max(BENCH_MIN_S, left()) if not dry else 900)
    for row in rows + ([ddp] if ddp else []):
        b = bench.get(BENCH_NAMES.get(row.get("name", ""), ""), {})
        row["bench"] = b if row.get("precision", "").startswith("bf16") else {}
    result = {"machine": machine(device), "date": time.strftime("%Y-%m-%d %H:%M"), "dry": dry,
              "torch": torch.__version__, "rows": rows, "ddp": ddp, "bench": bench, "bench_error": bench_error,
              "wall_s": time.perf_counter() - started}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    table = gpu_table(result)
    (out / "gpu_check.md").write_text(table)
    print("\n" + table)
    print(f"wrote {out / 'gpu_check.md'} and {out / 'gpu_check.json'} in {result['wall_s']:.0f} s")
    return result


def gpu_table(result: dict) -> str:
    lines = [f"GPU check{' (DRY: tiny scale on the CPU)' if result['dry'] else ''}, {result['date']}, "
             f"{result['machine']}, torch {result['torch']}, {result['wall_s']:.0f} s. Step time: median after the "
             "first step (PGGAN: its final 1024 px step); bench columns from `python -m boneage.bench` "
             "(bf16-mixed rows)." + (f" Bench: {result['bench_error']}." if result.get("bench_error") else ""), "",
             "| family | precision | step time | images/s | peak memory | syncs/step | framework/plain | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"] + ([result["ddp"]] if result.get("ddp") else []):
        growth = r.get("name") and "pggan" in r["name"]
        ms = r.get("last_ms") if growth else r.get("step_ms_median")
        ips = (r["batch"] * r.get("world_size", 1) / (ms / 1e3)) if ms and r.get("batch") else None
        b = r.get("bench") or {}
        syncs, ratio = b.get("syncs_per_step"), b.get("ratio")
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["family"], r["precision"], f"{ms:,.1f} ms" if ms else "-", f"{ips:,.1f}" if ips else "-",
            f"{r['peak_mib']:,.0f} MiB" if r.get("peak_mib") else "-",
            f"{syncs:g}" if syncs is not None else "-", f"{ratio:.3f}" if ratio else "-", r.get("error") or ""))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        return _child(argv[1])
    p = argparse.ArgumentParser(prog="python -m boneage.paperscale", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("steps", help="every experiment YAML at its own size, a couple of steps (make paper-steps)")
    s.add_argument("--experiments", default="", help="comma-separated names (default: every experiments/*.yaml)")
    s.add_argument("--out", default=STEPS_OUT, help="folder for the table, phantoms and runs")
    s.add_argument("--n", type=int, default=24, help="phantom images per data set")
    s.add_argument("--steps", type=int, default=2, help="training steps (PGGAN: one per phase)")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--timeout", type=float, default=None, help="seconds per experiment (default: none)")
    g = sub.add_parser("gpu-check", help="the GPU check (make gpu-check [DRY=1])")
    g.add_argument("--dry", action="store_true", help="tiny scale on the CPU")
    g.add_argument("--out", default=GPU_OUT)
    args = p.parse_args(argv)
    if args.command == "steps":
        names = [e.strip() for e in args.experiments.split(",") if e.strip()] or experiment_names()
        unknown = [e for e in names if not (EXPERIMENTS / f"{e}.yaml").is_file()]
        if unknown:
            p.error(f"unknown experiments {unknown}; experiments: {' '.join(experiment_names())}")
        rows = paper_steps(names, Path(args.out), n=args.n, steps=args.steps, device=args.device,
                           timeout=args.timeout)
        return 0 if all(r["ok"] for r in rows) else 1
    result = gpu_check(Path(args.out), dry=args.dry)
    return 0 if all(not r.get("error") for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
