"""Latent-space age analysis of a trained PGGAN (paper 001, Figs. 7 and 8).

Steps (each a function; ``python -m boneage.analysis.latent STEP`` runs them on a PGGAN fit run and an
age-regressor fit run, see :func:`main`):

- ``fit_lasso``: LASSO of the regressor's predicted age on the latent vectors, penalty by
  10-fold cross-validation (scikit-learn ``LassoCV``), absolute error mean +- sd on training
  and held-out latents, and the scatter figure (Fig. 8a).
- ``nearest_neighbours`` / ``neighbour_age_sd``: training images nearest to generated ones by
  pixel distance and by the regressor's penultimate features; the sample standard deviation
  of the neighbours' true ages per method (Fig. 7; paper: 21.4 months by pixels, 10.2 by features).
- ``aging_walk`` / ``interpolate_latents`` / ``write_gif`` / ``loess``: from a latent predicted
  at 3-4 years, repeatedly step to the nearest latent predicted about 2 years older, render the
  interpolated frames and plot predicted age per frame with a smoothed trend (Fig. 8b).
- ``age_direction`` / ``move_to_age``: beyond the paper, the LASSO coefficients as an
  age-control direction; moving a latent along it to a target predicted age.

Paper is silent on: the held-out fraction (chose 20 %), interpolation (chose linear: the
generator pixel-normalises its latent, so the image path equals the normalised one), the age
tolerance of a walk step (chose +-6 months), the smoother (LOESS: local linear with tricube
weights, written here because statsmodels is not a dependency), and how to pick the start
latent among those predicted at 3-4 years (chose the one whose prediction is nearest 42 months).
Ages are in the label units (RSNA: months); ``units_per_year`` converts the paper's years.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import BasePredictionWriter
from sklearn.linear_model import LassoCV
from sklearn.model_selection import train_test_split

from boneage.analysis.figures import write_figure
from boneage.runs import RUNS_DIR, Run, RunError, build_data, build_system, instantiate, resolve_run

# ----------------------------------------------------------------------------- LASSO


@dataclass
class LassoResult:
    """A fitted LASSO of predicted age on latents, with its train / held-out errors."""

    alpha: float  # penalty chosen by cross-validation
    coef: np.ndarray  # [D] coefficients (age units per latent unit)
    intercept: float
    train_index: np.ndarray
    test_index: np.ndarray
    train_pred: np.ndarray
    test_pred: np.ndarray
    train_true: np.ndarray
    test_true: np.ndarray
    summary: dict = field(default_factory=dict)

    def predict(self, latents: np.ndarray) -> np.ndarray:
        return np.asarray(latents) @ self.coef + self.intercept


def fit_lasso(latents: np.ndarray, ages: np.ndarray, test_size: float = 0.2, cv: int = 10,
              seed: int = 0, n_alphas: int = 50) -> LassoResult:
    """LASSO ``age ~ latents`` with the penalty minimising ``cv``-fold CV error (paper: 10)."""
    latents, ages = np.asarray(latents, dtype=np.float64), np.asarray(ages, dtype=np.float64)
    if latents.ndim != 2 or len(latents) != len(ages):
        raise ValueError(f"latents must be [N, D] and ages [N], got {latents.shape} and {ages.shape}")
    if len(ages) < 2 * cv:
        raise ValueError(f"LASSO with {cv}-fold CV needs at least {2 * cv} samples, got {len(ages)}")
    idx = np.arange(len(ages))
    tr, te = train_test_split(idx, test_size=test_size, random_state=seed)
    model = LassoCV(cv=cv, alphas=n_alphas, random_state=seed, max_iter=10000)
    model.fit(latents[tr], ages[tr])
    ptr, pte = model.predict(latents[tr]), model.predict(latents[te])
    etr, ete = np.abs(ptr - ages[tr]), np.abs(pte - ages[te])
    summary = {
        "alpha": float(model.alpha_),
        "n_train": int(len(tr)),
        "n_test": int(len(te)),
        "nonzero_coefficients": int(np.count_nonzero(model.coef_)),
        "train_abs_error_mean": float(etr.mean()),
        "train_abs_error_sd": float(etr.std(ddof=1)),
        "test_abs_error_mean": float(ete.mean()),
        "test_abs_error_sd": float(ete.std(ddof=1)),
        "test_r2": float(model.score(latents[te], ages[te])),
    }
    return LassoResult(float(model.alpha_), model.coef_.copy(), float(model.intercept_), tr, te,
                       ptr, pte, ages[tr], ages[te], summary)


def lasso_figure(result: LassoResult, path: str | Path, units: str = "months") -> Path:
    """Fig. 8a: LASSO prediction vs the regressor's predicted age, train and held-out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.summary
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharex=True, sharey=True)
    for ax, true, pred, name, key in [
        (axes[0], result.train_true, result.train_pred, "training latents", "train"),
        (axes[1], result.test_true, result.test_pred, "held-out latents", "test"),
    ]:
        ax.scatter(true, pred, s=4, alpha=0.4)
        lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "r--", lw=1)
        ax.set_title(f"{name}: |error| {s[key + '_abs_error_mean']:.1f} +- {s[key + '_abs_error_sd']:.1f}")
        ax.set_xlabel(f"regressor-predicted age ({units})")
    axes[0].set_ylabel(f"LASSO-predicted age ({units})")
    return write_figure(fig, path)


# ----------------------------------------------------------------------------- nearest neighbours


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray,
                       k: int = 5, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Indices [Q, k] and Euclidean distances [Q, k] of each query's k nearest reference rows.

    Inputs are flattened per row (images compare by pixels, feature vectors by features).
    """
    q = torch.as_tensor(np.asarray(queries)).flatten(1).double()
    r = torch.as_tensor(np.asarray(reference)).flatten(1).double()
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values per row, reference {r.shape[1]}")
    k = min(k, len(r))
    idx, dist = [], []
    for s in range(0, len(q), chunk):
        d = torch.cdist(q[s: s + chunk], r)
        val, ind = d.topk(k, dim=1, largest=False)
        idx.append(ind)
        dist.append(val)
    return torch.cat(idx).numpy(), torch.cat(dist).numpy()


def neighbour_age_sd(indices: np.ndarray, ages: np.ndarray) -> np.ndarray:
    """Sample standard deviation (ddof 1) of the neighbours' true ages, per query."""
    return np.asarray(ages, dtype=np.float64)[np.asarray(indices)].std(axis=1, ddof=1)


def neighbours_figure(generated: np.ndarray, reference: np.ndarray, by_pixels: np.ndarray,
                      by_features: np.ndarray, ref_ages: np.ndarray, path: str | Path,
                      units: str = "months") -> Path:
    """Fig. 7: a generated image and its nearest training images by pixels (row a) and features (b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = by_pixels.shape[1]
    fig, axes = plt.subplots(2, k + 1, figsize=(1.8 * (k + 1), 4.0))
    for row, (idx, name) in enumerate([(by_pixels[0], "pixels"), (by_features[0], "features")]):
        axes[row, 0].imshow(np.asarray(generated[0]).squeeze(), cmap="gray", vmin=-1, vmax=1)
        axes[row, 0].set_title(f"generated\n(NN by {name})", fontsize=8)
        for j, i in enumerate(idx):
            axes[row, j + 1].imshow(np.asarray(reference[i]).squeeze(), cmap="gray", vmin=-1, vmax=1)
            axes[row, j + 1].set_title(f"{ref_ages[i]:.0f} {units}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    return write_figure(fig, path)


# ----------------------------------------------------------------------------- aging walk


def aging_walk(latents: np.ndarray, ages: np.ndarray, start_range: tuple[float, float] = (36.0, 48.0),
               step: float = 24.0, tolerance: float = 6.0, max_steps: int = 10) -> list[int]:
    """Indices of a latent path that ages: start predicted in ``start_range``, then repeatedly
    the nearest (latent L2) unvisited latent predicted ``step +- tolerance`` older (paper: start
    3-4 years, 2-year gaps). Stops when no candidate is left or after ``max_steps`` steps."""
    z, a = np.asarray(latents, dtype=np.float64), np.asarray(ages, dtype=np.float64)
    lo, hi = start_range
    starts = np.flatnonzero((a >= lo) & (a <= hi))
    if len(starts) == 0:
        raise ValueError(f"no latent has a predicted age in {start_range}; predicted ages span "
                         f"{a.min():.1f}..{a.max():.1f}: generate more images or change start_range")
    path = [int(starts[np.argmin(np.abs(a[starts] - (lo + hi) / 2))])]
    visited = set(path)
    for _ in range(max_steps):
        target = a[path[-1]] + step
        cand = np.flatnonzero(np.abs(a - target) <= tolerance)
        cand = np.array([c for c in cand if c not in visited], dtype=int)
        if len(cand) == 0:
            break
        nxt = int(cand[np.argmin(np.linalg.norm(z[cand] - z[path[-1]], axis=1))])
        path.append(nxt)
        visited.add(nxt)
    return path


def interpolate_latents(keys: np.ndarray, frames_per_step: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation through key latents [K, D]: frames [F, D] and the key frames' positions."""
    keys = np.asarray(keys, dtype=np.float64)
    if len(keys) < 2:
        return keys.copy(), np.arange(len(keys))
    t = np.linspace(0.0, 1.0, frames_per_step, endpoint=False)[:, None]
    frames = [keys[i] * (1 - t) + keys[i + 1] * t for i in range(len(keys) - 1)]
    frames.append(keys[-1:])
    return np.concatenate(frames), np.arange(len(keys)) * frames_per_step


def loess(x: np.ndarray, y: np.ndarray, frac: float = 0.3) -> np.ndarray:
    """Local linear regression with tricube weights over the nearest ``frac`` of points (LOESS)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    r = max(2, int(np.ceil(frac * n)))
    out = np.empty(n)
    for i in range(n):
        d = np.abs(x - x[i])
        h = np.sort(d)[min(r, n) - 1] or 1.0
        w = np.clip(1 - (d / h) ** 3, 0, None) ** 3
        sw = w.sum()
        mx, my = (w * x).sum() / sw, (w * y).sum() / sw
        var = (w * (x - mx) ** 2).sum()
        slope = (w * (x - mx) * (y - my)).sum() / var if var > 0 else 0.0
        out[i] = my + slope * (x[i] - mx)
    return out


def to_uint8(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], [N, 1, H, W] or [N, H, W], to uint8 [N, H, W]."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4:
        x = x[:, 0]
    return np.clip((x + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def write_gif(frames: np.ndarray, path: str | Path, fps: float = 12.0,
              captions: list[str] | None = None) -> Path:
    """Animated GIF of uint8 frames [F, H, W] (PIL), with optional per-frame captions."""
    from PIL import Image, ImageDraw

    imgs = []
    for i, f in enumerate(np.asarray(frames)):
        im = Image.fromarray(f).convert("L")
        if captions:
            ImageDraw.Draw(im).text((2, 2), captions[i], fill=255)
        imgs.append(im)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    return path


def walk_figure(frame_ages: np.ndarray, key_positions: np.ndarray, path: str | Path,
                units: str = "months", frac: float = 0.3) -> Path:
    """Fig. 8b: predicted age per frame (black), key latents (red), LOESS trend (blue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(frame_ages))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.scatter(x, frame_ages, s=8, c="k", label="frame")
    ax.scatter(key_positions, np.asarray(frame_ages)[key_positions], s=30, c="r", label="key latent")
    ax.plot(x, loess(x, frame_ages, frac), "b-", label="LOESS trend")
    ax.set_xlabel("frame")
    ax.set_ylabel(f"predicted age ({units})")
    ax.legend(fontsize=8)
    return write_figure(fig, path)


# ----------------------------------------------------------------------------- age control


def age_direction(coef: np.ndarray) -> np.ndarray:
    """Unit latent direction of increasing predicted age (the normalised LASSO coefficients)."""
    coef = np.asarray(coef, dtype=np.float64)
    norm = np.linalg.norm(coef)
    if norm == 0:
        raise ValueError("LASSO kept no coefficient: no age direction "
                         "(try more latents or a smaller penalty)")
    return coef / norm


def move_to_age(latents: np.ndarray, coef: np.ndarray, intercept: float,
                target: float | np.ndarray) -> np.ndarray:
    """Shift latents along the coefficient direction so the LASSO predicts ``target``:
    ``z + (target - (z . w + b)) / |w|^2 * w`` (the smallest move that does)."""
    z = np.asarray(latents, dtype=np.float64)
    w = np.asarray(coef, dtype=np.float64)
    gap = np.asarray(target, dtype=np.float64) - (z @ w + intercept)
    return z + np.multiply.outer(gap, w) / (w @ w)


def control_summary(target: np.ndarray, achieved: np.ndarray) -> dict[str, float]:
    """How well the regressor's predicted age follows the target: MAE, bias, Pearson r, slope."""
    t, a = np.asarray(target, dtype=np.float64), np.asarray(achieved, dtype=np.float64)
    slope = float(np.polyfit(t, a, 1)[0]) if np.ptp(t) > 0 else float("nan")
    r = float(np.corrcoef(t, a)[0, 1]) if np.ptp(t) > 0 and np.ptp(a) > 0 else float("nan")
    return {"mae": float(np.abs(a - t).mean()), "bias": float((a - t).mean()), "pearson_r": r, "slope": slope}


# ----------------------------------------------------------------------------- loading trained runs


def load_regressor(run: Run, ckpt: str = "best"):
    """The age regressor of a fit run, rebuilt from the run's own config.yaml, in eval mode; says so
    when the run trained from scratch (the paper's Xception started from ImageNet weights)."""
    network = ((run.config().get("model") or {}).get("init_args") or {}).get("network") or {}
    args = network.get("init_args") or {}
    if "pretrained_path" in args and args["pretrained_path"] is None:
        print(f"regressor {run.label} was trained from scratch (pretrained_path null); the paper's Xception "
              "started from ImageNet weights")
    return build_system(run, ckpt).requires_grad_(False)


def regressor_size(run: Run) -> tuple[int, int]:
    """The (height, width) the regressor run was trained at (its config, overrides included)."""
    data = run.config().get("data") or {}
    size = (data.get("init_args") or {}).get("image_size")
    if size is None:
        size = build_data(run).image_size
    return int(size[0]), int(size[1])


def load_datamodule(run: Run):
    """The run's DataModule from its own config.yaml, set up (splits and caches ready)."""
    dm = build_data(run)
    dm.setup("fit")
    return dm


def load_generator(run: Run, ckpt: str = "last") -> tuple[torch.nn.Module, int]:
    """The EMA generator of a PGGAN fit run (its config.yaml + checkpoint) and its final level."""
    model = run.config().get("model") or {}
    spec = (model.get("init_args") or {}).get("generator")
    if spec is None:
        raise RunError(f"{run.label}'s config.yaml has no model.init_args.generator: name a PGGAN run "
                       "(--gan-run)")
    gen = instantiate(spec)
    path = run.checkpoint(ckpt)
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    ema = {k[len("generator_ema."):]: v for k, v in state.items() if k.startswith("generator_ema.")}
    if not ema:
        raise RunError(f"{path} holds no 'generator_ema.*' weights: it is not a PGGAN checkpoint")
    gen.load_state_dict(ema)
    return gen.eval().requires_grad_(False), gen.max_level


def _regressor_input(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    mode = "area" if images.shape[-1] > size[-1] else "bilinear"
    return F.interpolate(images.float(), size=tuple(size), mode=mode)


@torch.no_grad()
def predict_age(system, images: torch.Tensor, size: tuple[int, int], features: bool = False):
    """Predicted age (label units) of images in [-1, 1]; with ``features`` also penultimate features."""
    x = _regressor_input(images, size)
    net = system.network
    sex = torch.full((len(x),), 0.5, device=x.device) if getattr(net, "use_sex", False) else None
    age = system(x, sex).float()
    if not features:
        return age
    feats = net.forward_features(x, sex) if hasattr(net, "forward_features") else None
    return age, feats.float()


# ----------------------------------------------------------------------------- generation (Lightning predict)


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def latent_for(indices: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Latent of each sample index: N(0, I) from a generator seeded by (seed, index), so any
    sharding over devices and batches gives the same latent for the same index."""
    out = torch.empty(len(indices), dim)
    for j, i in enumerate(indices.tolist()):
        out[j] = torch.randn(dim, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(i)))
    return out


class LatentAgeSampler(pl.LightningModule):
    """Generates images from indexed latents and predicts their age (``trainer.predict``)."""

    def __init__(self, generator: torch.nn.Module, regressor, regressor_size: tuple[int, int], seed: int = 0,
                 thumb_size: int = 64, features: bool = True) -> None:
        super().__init__()
        self.generator = generator
        self.regressor = regressor
        self.regressor_size = tuple(regressor_size)
        self.seed = seed
        self.thumb_size = thumb_size
        self.features = features

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        z = latent_for(batch.cpu(), self.generator.latent_dim, self.seed).to(self.device)
        images = self.generator(z).float().clamp(-1, 1)
        out = predict_age(self.regressor, images, self.regressor_size, self.features)
        age, feats = out if self.features else (out, None)
        small = images.shape[-1] > self.thumb_size
        thumbs = F.adaptive_avg_pool2d(images, self.thumb_size) if small else images
        res = {"index": batch.cpu(), "latent": z.cpu(), "age": age.cpu(),
               "thumb": torch.from_numpy(to_uint8(thumbs.cpu()))}
        if feats is not None:
            res["features"] = feats.cpu()
        return res


class ShardWriter(BasePredictionWriter):
    """Writes every predicted batch as ``shard_r<rank>_b<batch>.npz`` (shard by shard)."""

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        path = self.out_dir / f"shard_r{trainer.global_rank}_b{batch_idx:06d}.npz"
        np.savez(path, **{k: v.numpy() for k, v in prediction.items()})


def generate(generator: torch.nn.Module, regressor, regressor_size: tuple[int, int], n: int,
             out_dir: str | Path, batch_size: int = 64, seed: int = 0, thumb_size: int = 64,
             features: bool = True, accelerator: str = "auto", devices: int | str = "auto",
             progress: bool = True) -> Path:
    """Generate ``n`` images through Lightning's predict (several GPUs with ``devices``); write
    latents, predicted ages, penultimate features and thumbnails shard by shard into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("shard_*.npz"):
        old.unlink()
    module = LatentAgeSampler(generator, regressor, regressor_size, seed, thumb_size, features)
    loader = torch.utils.data.DataLoader(_Indices(n), batch_size=batch_size, shuffle=False)
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, logger=False,
                         callbacks=[ShardWriter(out_dir)], enable_progress_bar=progress,
                         enable_model_summary=False, inference_mode=True)
    trainer.predict(module, loader, return_predictions=False)
    if trainer.is_global_zero:
        print(f"wrote {n} generated latents with predicted ages in {len(list(out_dir.glob('shard_*.npz')))} "
              f"shards to {out_dir}")
    return out_dir


def load_shards(out_dir: str | Path) -> dict[str, np.ndarray]:
    """All shards of ``generate``, sorted by sample index, duplicates (DDP padding) removed."""
    files = sorted(Path(out_dir).glob("shard_*.npz"))
    if not files:
        raise FileNotFoundError(f"no shard_*.npz in {out_dir}: run the generate step first")
    parts = [dict(np.load(f)) for f in files]
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _, first = np.unique(data["index"], return_index=True)
    return {k: v[first] for k, v in data.items()}


# ----------------------------------------------------------------------------- analysis steps


def _units(dm_or_cfg) -> str:
    return getattr(dm_or_cfg, "age_units", "months")


def _write_json(path: Path, data: dict) -> Path:
    import json

    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def step_lasso(shards: str | Path, out: str | Path, cv: int = 10, seed: int = 0,
               units: str = "months") -> dict:
    """LASSO of predicted age on latents (Fig. 8a): ``lasso.json``, ``lasso_coef.npz``, ``lasso.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_shards(shards)
    res = fit_lasso(data["latent"], data["age"], cv=cv, seed=seed)
    np.savez(out / "lasso_coef.npz", coef=res.coef, intercept=res.intercept, alpha=res.alpha)
    _write_json(out / "lasso.json", res.summary)
    lasso_figure(res, out / "lasso.png", units)
    s = res.summary
    print(f"LASSO on {len(data['age'])} latents: |error| train {s['train_abs_error_mean']:.2f} +- "
          f"{s['train_abs_error_sd']:.2f}, held-out {s['test_abs_error_mean']:.2f} +- "
          f"{s['test_abs_error_sd']:.2f} "
          f"{units}; wrote lasso.json, lasso_coef.npz, lasso.png to {out}")
    return s


@torch.no_grad()
def _real_set(dm, regressor, regressor_size, thumb_size: int, batch_size: int = 64):
    """Training images as thumbnails, their true ages and the regressor's penultimate features."""
    table = dm.table("train")
    arr = np.asarray(dm.dataset("train").cache.array)  # decoded, resized, not augmented
    thumbs, feats = [], []
    for s in range(0, len(table), batch_size):
        x = torch.from_numpy(arr[s: s + batch_size].astype(np.float32)).unsqueeze(1) / 127.5 - 1.0
        feats.append(predict_age(regressor, x, regressor_size, True)[1])
        small = F.adaptive_avg_pool2d(x, thumb_size) if x.shape[-1] > thumb_size else x
        thumbs.append(to_uint8(small))
    return np.concatenate(thumbs), table["age"].to_numpy(np.float64), torch.cat(feats).numpy()


def step_neighbours(shards: str | Path, regressor_run: Run, out: str | Path, k: int = 5, queries: int = 16,
                    thumb_size: int = 64, regressor_ckpt: str = "best") -> dict:
    """Nearest training images of generated ones by pixels and by regressor features (Fig. 7)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_shards(shards)
    if "features" not in data:
        raise KeyError(f"the shards in {shards} hold no regressor features: run generate with features on")
    regressor = load_regressor(regressor_run, regressor_ckpt)
    dm = load_datamodule(regressor_run)
    size = regressor_size(regressor_run)
    real_thumbs, real_ages, real_feats = _real_set(dm, regressor, size, thumb_size)
    q = np.arange(min(queries, len(data["age"])))
    gen_thumbs = data["thumb"][q]
    if gen_thumbs.shape[-1] != real_thumbs.shape[-1]:
        raise ValueError(f"generated thumbnails are {gen_thumbs.shape[-1]} px, real ones "
                         f"{real_thumbs.shape[-1]} px: "
                         "use the same thumb_size in generate and neighbours")
    by_pix, _ = nearest_neighbours(gen_thumbs.astype(np.float64), real_thumbs.astype(np.float64), k)
    by_feat, _ = nearest_neighbours(data["features"][q], real_feats, k)
    sd_pix, sd_feat = neighbour_age_sd(by_pix, real_ages), neighbour_age_sd(by_feat, real_ages)
    units = _units(dm)
    summary = {"queries": int(len(q)), "k": int(k), "thumb_size": int(thumb_size),
               "age_sd_by_pixels_mean": float(sd_pix.mean()),
               "age_sd_by_features_mean": float(sd_feat.mean()),
               "age_sd_by_pixels_first": float(sd_pix[0]), "age_sd_by_features_first": float(sd_feat[0]),
               "units": units}
    _write_json(out / "neighbours.json", summary)
    to_pm1 = lambda a: a.astype(np.float32) / 127.5 - 1  # noqa: E731
    neighbours_figure(to_pm1(gen_thumbs), to_pm1(real_thumbs), by_pix, by_feat, real_ages,
                      out / "neighbours.png", units)
    print(f"nearest neighbours of {len(q)} generated images among {len(real_ages)} training images: "
          f"sd of the "
          f"neighbours' true ages {sd_pix.mean():.2f} by pixels, {sd_feat.mean():.2f} by features ({units}); "
          f"wrote neighbours.json, neighbours.png to {out}")
    return summary


@torch.no_grad()
def _render_ages(generator, regressor, size, latents: np.ndarray, batch_size: int = 32):
    imgs, ages = [], []
    for s in range(0, len(latents), batch_size):
        z = torch.as_tensor(latents[s: s + batch_size], dtype=torch.float32)
        x = generator(z).float().clamp(-1, 1)
        ages.append(predict_age(regressor, x, size).numpy())
        imgs.append(x.numpy())
    return np.concatenate(imgs), np.concatenate(ages)


def step_walk(shards: str | Path, gan_run: Run, regressor_run: Run, out: str | Path,
              start_years: tuple[float, float] = (3.0, 4.0), step_years: float = 2.0,
              tolerance_years: float = 0.5, frames_per_step: int = 12, max_steps: int = 8,
              gan_ckpt: str = "last", regressor_ckpt: str = "best") -> dict:
    """Latent aging walk (Video 1 / Fig. 8b): ``walk.gif``, ``walk.png``, ``walk.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_shards(shards)
    units = _units(build_data(regressor_run))
    per_year = 12.0 if units == "months" else 1.0
    size = regressor_size(regressor_run)
    start = (start_years[0] * per_year, start_years[1] * per_year)
    ages_all = data["age"]
    if not ((ages_all >= start[0]) & (ages_all <= start[1])).any():
        youngest = float(ages_all.min())
        print(f"walk: no generated image is predicted at {start_years[0]}-{start_years[1]} years "
              f"(predictions span {youngest / per_year:.1f}-{ages_all.max() / per_year:.1f} years); "
              "starting from the youngest")
        start = (youngest, youngest)
    path = aging_walk(data["latent"], ages_all, start, step_years * per_year, tolerance_years * per_year,
                      max_steps)
    frames, keys = interpolate_latents(data["latent"][path], frames_per_step)
    generator, _ = load_generator(gan_run, gan_ckpt)
    regressor = load_regressor(regressor_run, regressor_ckpt)
    imgs, ages = _render_ages(generator, regressor, size, frames)
    captions = [f"{a / per_year:.1f} y" for a in ages]
    write_gif(to_uint8(imgs), out / "walk.gif", captions=captions)
    walk_figure(ages, keys, out / "walk.png", units)
    trend = loess(np.arange(len(ages)), ages)
    summary = {"start_range": [float(start[0]), float(start[1])], "key_indices": [int(i) for i in path],
               "key_ages_shards": [float(a) for a in data["age"][path]],
               "frames": int(len(frames)), "first_age": float(ages[0]), "last_age": float(ages[-1]),
               "trend_rise": float(trend[-1] - trend[0]),
               "spearman_frame_vs_age": float(_spearman(np.arange(len(ages)), ages)), "units": units}
    _write_json(out / "walk.json", summary)
    print(f"aging walk through {len(path)} key latents ({len(frames)} frames): predicted age "
          f"{ages[0]:.1f} -> {ages[-1]:.1f} {units}; wrote walk.gif, walk.png, walk.json to {out}")
    return summary


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic) if np.ptp(y) > 0 else float("nan")


def step_control(shards: str | Path, lasso_dir: str | Path, gan_run: Run, regressor_run: Run, out: str | Path,
                 n: int = 16, targets: list[float] | None = None, seed: int = 0, gan_ckpt: str = "last",
                 regressor_ckpt: str = "best") -> dict:
    """Move latents along the LASSO direction to target ages; how well the regressor follows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    coef_file = Path(lasso_dir) / "lasso_coef.npz"
    if not coef_file.is_file():
        raise FileNotFoundError(f"{coef_file} not found: run the lasso step first")
    lasso = np.load(coef_file)
    data = load_shards(shards)
    size = regressor_size(regressor_run)
    ages = data["age"]
    if targets is None:
        targets = list(np.linspace(np.percentile(ages, 5), np.percentile(ages, 95), 5))
    rng = np.random.default_rng(seed)
    z0 = data["latent"][rng.choice(len(ages), size=min(n, len(ages)), replace=False)]
    t = np.repeat(np.asarray(targets, dtype=np.float64), len(z0))
    moved = move_to_age(np.tile(z0, (len(targets), 1)), lasso["coef"], float(lasso["intercept"]), t)
    generator, _ = load_generator(gan_run, gan_ckpt)
    regressor = load_regressor(regressor_run, regressor_ckpt)
    _, achieved = _render_ages(generator, regressor, size, moved)
    _, before = _render_ages(generator, regressor, size, z0)
    summary = control_summary(t, achieved)
    summary.update({"targets": [float(x) for x in targets], "latents": int(len(z0)),
                    "mae_before_moving": float(np.abs(np.tile(before, len(targets)) - t).mean())})
    _write_json(out / "control.json", summary)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.scatter(t, achieved, s=10, alpha=0.6)
    ax.plot([t.min(), t.max()], [t.min(), t.max()], "r--", lw=1)
    ax.set(xlabel="target age (LASSO)", ylabel="regressor-predicted age",
           title=f"age control: MAE {summary['mae']:.1f}, r {summary['pearson_r']:.2f}")
    fig.tight_layout()
    fig.savefig(out / "control.png", dpi=120)
    plt.close(fig)
    print(f"age control on {len(z0)} latents x {len(targets)} targets: regressor MAE to target "
          f"{summary['mae']:.2f} "
          f"(before moving {summary['mae_before_moving']:.2f}), r {summary['pearson_r']:.3f}; "
          f"wrote control.json, control.png to {out}")
    return summary


@torch.no_grad()
def step_regressor_errors(regressor_run: Run, out: str | Path, batch_size: int = 32,
                          regressor_ckpt: str = "best") -> dict:
    """MAE on training and test data and MAE by true age in years (paper Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    regressor = load_regressor(regressor_run, regressor_ckpt)
    dm = load_datamodule(regressor_run)
    units = _units(dm)
    per_year = 12.0 if units == "months" else 1.0
    rows, summary = [], {"units": units}
    for split in ("train", "test"):
        ds = dm.dataset(split, augment=False)  # in-bag error without augmentation
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
        preds, trues = [], []
        for batch in loader:
            sex = batch["sex"] if getattr(regressor.network, "use_sex", False) else None
            preds.append(regressor(batch["image"], sex).float().numpy())
            trues.append(batch["age"].numpy())
        p, t = np.concatenate(preds), np.concatenate(trues)
        err = np.abs(p - t)
        summary[f"{split}_mae"] = float(err.mean())
        summary[f"{split}_median_ae"] = float(np.median(err))
        year = np.floor(t / per_year).astype(int)
        rows.append(pd.DataFrame({"split": split, "year": year, "abs_error": err}))
    table = (pd.concat(rows).groupby(["split", "year"])["abs_error"].agg(["count", "mean"]).reset_index()
             .rename(columns={"mean": "mae"}))
    table.to_csv(out / "mae_by_year.csv", index=False)
    _write_json(out / "regressor_errors.json", summary)
    fig, axes = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    for ax, split in zip(axes, ("train", "test")):
        part = table[table["split"] == split]
        ax.bar(part["year"], part["mae"])
        ax.set(ylabel=f"MAE ({units})", title=f"{split}: MAE {summary[split + '_mae']:.2f} {units}")
    axes[-1].set_xlabel("true age (years)")
    fig.tight_layout()
    fig.savefig(out / "mae_by_year.png", dpi=120)
    plt.close(fig)
    print(f"regressor MAE train {summary['train_mae']:.2f}, test {summary['test_mae']:.2f} {units}; "
          f"wrote mae_by_year.csv, mae_by_year.png, regressor_errors.json to {out}")
    return summary


ALL_STEPS = ("regressor-errors", "generate", "lasso", "neighbours", "walk", "control")
NEEDS_GAN = ("generate", "walk", "control")
NEEDS_REGRESSOR = ("regressor-errors", "generate", "neighbours", "walk", "control")


def main(argv: list[str] | None = None) -> None:
    """``python -m boneage.analysis.latent STEP ...``: one command per analysis step, or ``all``.

    The GAN and the regressor are fit runs (``--gan-run`` / ``--regressor-run``; default the newest
    fit run of ``--gan-experiment`` / ``--regressor-experiment``), rebuilt from each run's own
    config.yaml and checkpoint; outputs go to ``<gan run>/analysis`` unless ``--out`` is given.
    """
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m boneage.analysis.latent", description=__doc__.split("\n")[0])
    p.add_argument("step", choices=[*ALL_STEPS, "all"])
    p.add_argument("--runs-dir", default=RUNS_DIR, help="root of the run directories")
    p.add_argument("--gan-experiment", default="pggan_rsna")
    p.add_argument("--gan-run", help="PGGAN fit run: id, unique prefix or run directory (default: the newest)")
    p.add_argument("--gan-ckpt", default="last", help="checkpoint of the GAN run: last, best or a file name")
    p.add_argument("--regressor-experiment", default="xception_rsna")
    p.add_argument("--regressor-run", help="age-regressor fit run: id, unique prefix or run directory "
                                           "(default: the newest)")
    p.add_argument("--regressor-ckpt", default="best", help="checkpoint of the regressor run: best, last or a file")
    p.add_argument("--out", default=None, help="output folder (default: <gan run>/analysis)")
    p.add_argument("--n", type=int, default=200_000, help="generated images (paper: 200,000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--thumb-size", type=int, default=64, help="pixel size for the pixel-distance neighbours")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--k", type=int, default=5, help="neighbours per generated image")
    p.add_argument("--queries", type=int, default=16, help="generated images whose neighbours are searched")
    p.add_argument("--cv", type=int, default=10, help="LASSO cross-validation folds (paper: 10)")
    p.add_argument("--frames-per-step", type=int, default=12)
    p.add_argument("--start-years", type=float, nargs=2, default=[3.0, 4.0], help="walk start (paper: 3-4)")
    p.add_argument("--step-years", type=float, default=2.0, help="walk age gap (paper: 2 years)")
    p.add_argument("--tolerance-years", type=float, default=0.5, help="accepted deviation from the gap")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    steps = list(ALL_STEPS) if a.step == "all" else [a.step]
    try:
        _run_steps(a, steps)
    except (RunError, FileNotFoundError) as err:  # expected problems: one line, no traceback
        print(f"latent: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _run_steps(a, steps: list[str]) -> None:
    gan = reg = None
    if any(s in NEEDS_GAN for s in steps) or a.out is None:
        gan = resolve_run(a.runs_dir, a.gan_experiment, a.gan_run, verbose=True)
    if any(s in NEEDS_REGRESSOR for s in steps):
        reg = resolve_run(a.runs_dir, a.regressor_experiment, a.regressor_run, verbose=True)
    out = Path(a.out) if a.out else gan.path / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    shards = out / "shards"
    _write_json(out / "analysis_runs.json", {  # which runs and checkpoints these outputs come from
        "gan_run": str(gan.path) if gan else None, "gan_ckpt": str(gan.checkpoint(a.gan_ckpt)) if gan else None,
        "regressor_run": str(reg.path) if reg else None,
        "regressor_ckpt": str(reg.checkpoint(a.regressor_ckpt)) if reg else None, "steps": steps})
    devices = int(a.devices) if str(a.devices).isdigit() else a.devices
    for step in steps:
        if step == "regressor-errors":
            step_regressor_errors(reg, out, a.batch_size, a.regressor_ckpt)
        elif step == "generate":
            generator, _ = load_generator(gan, a.gan_ckpt)
            regressor = load_regressor(reg, a.regressor_ckpt)
            generate(generator, regressor, regressor_size(reg), a.n, shards, a.batch_size, a.seed, a.thumb_size,
                     True, a.accelerator, devices, not a.no_progress)
        elif step == "lasso":
            step_lasso(shards, out, a.cv, a.seed)
        elif step == "neighbours":
            step_neighbours(shards, reg, out, a.k, a.queries, a.thumb_size, a.regressor_ckpt)
        elif step == "walk":
            step_walk(shards, gan, reg, out, tuple(a.start_years), a.step_years, a.tolerance_years,
                      a.frames_per_step, gan_ckpt=a.gan_ckpt, regressor_ckpt=a.regressor_ckpt)
        elif step == "control":
            step_control(shards, out, gan, reg, out, seed=a.seed, gan_ckpt=a.gan_ckpt,
                         regressor_ckpt=a.regressor_ckpt)


if __name__ == "__main__":
    main()
