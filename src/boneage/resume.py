"""Exact, pre-emption-safe resume: atomic checkpoints, RNG and sampler state, signal handling.

Lightning's checkpoints hold weights, optimizers and loop counters, but a run stopped in the
middle of an epoch and resumed does not continue the run it interrupted: the data order is
drawn again, the batches already seen are seen twice, RNG streams restart and epoch-level
logged means lose the batches before the stop. :class:`ExactResume` closes those gaps:

- **data order**: the training sampler's permutation becomes a function of (seed, epoch)
  (``DistributedSampler`` already is one), and on resume the batches already consumed in the
  interrupted epoch are skipped (the sampler position is saved with the checkpoint);
- **augmentation**: the dataset's albumentations pipeline (``dataset.augment``, which keeps its
  own RNG, independent of global seeds) is re-seeded before every batch from
  (seed, rank, epoch, batch), so a batch gets the same augmentation before and after a resume;
- **RNG**: Python, NumPy, torch (CPU and CUDA) states are saved with the checkpoint and restored
  when training restarts;
- **logged epoch metrics**: torchmetrics states become part of the checkpoint, and the
  accumulators of tensors logged with ``on_epoch=True`` are saved and merged back, so the epoch
  means of the interrupted epoch cover all its batches;
- **signals**: on SIGTERM or SIGUSR1 the callback writes ``last.ckpt`` at the next batch
  boundary (never in the middle of a step) and stops; on SLURM with auto-requeue it then runs
  Lightning's requeue handler (``hpc_ckpt_N.ckpt`` + ``scontrol requeue``), also at the batch
  boundary. The signal handlers only set Python flags, and a batch end reads them: nothing is
  copied from the device and, on one process, nothing is communicated. Under DDP a signal that
  reached rank 0 stops every rank at the next batch start (Lightning broadcasts rank 0's flag there
  at every batch anyway) and ``last.ckpt`` is written where they stopped; one that reached only
  another rank is shared by a collective every ``signal_check_every_n_batches`` batches (10);
- **atomic writes**: checkpoints are written to a temporary file in the same folder, fsynced and
  renamed (:class:`AtomicCheckpointIO`), so a kill during the write never leaves a corrupt
  ``last.ckpt``.

Limits (documented in docs/scale.md): augmentation is bit-exact after a resume with
``num_workers: 0``; with worker processes the data order is exact but the workers' augmentation
streams start afresh. Under DDP the torchmetrics states of rank 0 are saved, so the logged
training means of the interrupted epoch mix the ranks' shares differently (weights are exact).
State a LightningModule changes in its own ``on_train_batch_end`` hook runs after this
callback and is missing from a mid-epoch checkpoint: do per-batch updates in
``training_step`` or in a callback.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler
from torchmetrics import Metric

TMP_SUFFIX = ".tmp"


# --------------------------------------------------------------------------------- Lightning internals
# Exact resume and the signal handling reach into these non-public parts of Lightning (tested range:
# pytorch-lightning >=2.6,<2.7, pinned in setup.cfg). A Lightning release that moves one fails loudly
# at the start of fit, naming it, instead of resuming wrongly.
LIGHTNING_INTERNALS = (
    "trainer._signal_connector.received_sigterm",
    "trainer._logger_connector.should_update_logs",  # boneage.systems.base.logs_this_step
    "trainer._accelerator_connector.cluster_environment",
    "trainer.fit_loop._data_fetcher",
    "trainer.fit_loop._combined_loader",
    "trainer.fit_loop.epoch_loop._results",
    "trainer.fit_loop.epoch_loop.batch_progress.current.processed",
    "trainer.strategy.launcher",
    "ModelCheckpoint._should_skip_saving_checkpoint",
    "ModelCheckpoint._save_checkpoint",
    "ModelCheckpoint._monitor_candidates",
    "_ResultMetric.cumulated_batch_size",
    "_Metadata.is_mean_reduction",
    "ExperimentWriter._check_log_dir_exists",
    "RandomSampler._num_samples",
)


def missing_lightning_internals(trainer: pl.Trainer) -> list[str]:
    """The entries of :data:`LIGHTNING_INTERNALS` this Lightning version does not have."""
    from pytorch_lightning.loggers.csv_logs import ExperimentWriter
    from pytorch_lightning.trainer.connectors.logger_connector.result import _Metadata, _ResultMetric

    roots = {"trainer": trainer, "ModelCheckpoint": ModelCheckpoint, "ExperimentWriter": ExperimentWriter,
             "RandomSampler": RandomSampler([0]), "_ResultMetric": _ResultMetric(_Metadata("fx", "name"), True),
             "_Metadata": _Metadata}
    missing = []
    for name in LIGHTNING_INTERNALS:
        root, *attrs = name.split(".")
        obj = roots[root]
        for attr in attrs:
            if not hasattr(obj, attr):
                missing.append(name)
                break
            obj = getattr(obj, attr)
    return missing


# --------------------------------------------------------------------------------- atomic save
class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into ``<name>.<pid>.tmp`` beside the target, fsync, then ``os.replace``.

    Lightning's default goes through an fsspec transaction whose temporary file lives in the
    system temp folder; moving it onto another file system is a copy, and a kill during that
    copy leaves a truncated ``last.ckpt``. A rename within one folder is atomic on POSIX.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Save ``obj`` to ``path`` so that readers see the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{path.name}.*{TMP_SUFFIX}"):  # left by a killed writer
        pid = stale.name[len(path.name) + 1:-len(TMP_SUFFIX)]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# --------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) RNG states, as tensors and numbers only
    (loadable with ``torch.load(weights_only=True)``)."""
    version, py_state, gauss = random.getstate()
    name, np_keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
             "numpy": {"name": name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def mix_seed(*values: int) -> int:
    """A well-mixed 32-bit seed from several integers (seed, rank, epoch, batch)."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(1)[0])


# --------------------------------------------------------------------------------- sampler
class SeededIndex(int):
    """A dataset index that carries the seed of its sample's augmentation.

    The seed is a function of (seed, rank, epoch, position in the epoch), so a sample is augmented
    the same way before and after a resume, in the main process or in any loader worker (a
    dataset reads ``augment_seed``; to any other code it is a plain int).
    """

    def __new__(cls, value: int, augment_seed: int) -> SeededIndex:
        obj = super().__new__(cls, value)
        obj.augment_seed = augment_seed
        return obj

    def __reduce__(self):
        return SeededIndex, (int(self), self.augment_seed)


class ResumableSampler(Sampler[int]):
    """Wraps a loader's sampler: order a function of (seed, epoch), skip on resume, per-batch augment seeds.

    ``RandomSampler`` (which draws a fresh seed from the global RNG every epoch) is replaced by a
    permutation seeded with (seed, epoch); other samplers (``DistributedSampler``, sequential)
    are already deterministic and are iterated as they are.
    """

    def __init__(self, inner: Sampler, batch_size: int, seed: int, rank: int, dataset: Any,
                 epoch_fn: Any, reseed_augment: bool = True) -> None:
        self.inner = inner
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.dataset = dataset
        self.epoch_fn = epoch_fn
        self.reseed_augment = reseed_augment
        self.skip: tuple[int, int] | None = None  # (epoch, batches already consumed)

    def __len__(self) -> int:
        return len(self.inner)

    def _order(self, epoch: int) -> list[int]:
        inner = self.inner
        if isinstance(inner, RandomSampler) and not inner.replacement and inner._num_samples is None:
            g = torch.Generator()
            g.manual_seed(mix_seed(self.seed, epoch))
            return torch.randperm(len(inner.data_source), generator=g).tolist()
        return list(iter(inner))

    def __iter__(self):
        epoch = int(self.epoch_fn())
        order = self._order(epoch)
        start = 0
        if self.skip is not None and self.skip[0] == epoch:
            start = self.skip[1] * self.batch_size
        self.skip = None
        for pos in range(start, len(order)):
            if self.reseed_augment:  # the dataset seeds its augmentation with it, in whichever worker
                yield SeededIndex(order[pos], mix_seed(self.seed, self.rank, epoch, pos))
            else:
                yield order[pos]


def _train_loaders(trainer: pl.Trainer) -> list[DataLoader]:
    combined = trainer.fit_loop._combined_loader
    if combined is None:
        return []
    return [dl for dl in combined.flattened if isinstance(dl, DataLoader)]


# --------------------------------------------------------------------------------- callback
class ExactResume(Callback):
    """Make a stopped-and-resumed run end where the uninterrupted run ends (see the module docstring).

    Args:
        seed: seed of the data order and augmentation streams; default the run's
            ``seed_everything`` seed (``PL_GLOBAL_SEED``), else 0.
        reseed_augment: re-seed ``dataset.augment`` (albumentations) before every batch.
        save_on_signal: on SIGTERM/SIGUSR1 write ``last.ckpt`` at the next batch boundary and stop.
        signal_check_every_n_batches: under DDP, batches between the collectives that share a signal
            which reached a rank other than 0 (rank 0's is shared at every batch start by Lightning).
    """

    def __init__(self, seed: int | None = None, reseed_augment: bool = True, save_on_signal: bool = True,
                 signal_check_every_n_batches: int = 10) -> None:
        if signal_check_every_n_batches < 1:
            raise ValueError(f"signal_check_every_n_batches must be at least 1, got {signal_check_every_n_batches}")
        self.signal_every = int(signal_check_every_n_batches)
        self._batches = 0
        self.seed = seed
        self.reseed_augment = reseed_augment
        self.save_on_signal = save_on_signal
        self._trainer: pl.Trainer | None = None
        self._loaded: dict[str, Any] | None = None
        self._pending_logs: dict[str, Any] | None = None
        self._sigusr1 = False
        self._requeue = False
        self._deferred = False
        self._old_usr1: Any = None
        self.saved_on_signal: str | None = None

    @property
    def state_key(self) -> str:
        return "ExactResume"

    # --- setup / teardown ---------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        missing = missing_lightning_internals(trainer)
        if missing:
            raise RuntimeError(f"exact resume relies on Lightning internals that pytorch-lightning {pl.__version__} "
                               f"does not have: {', '.join(missing)}. Install pytorch-lightning>=2.6,<2.7 (the "
                               "tested range) or run with --exact_resume false")
        for m in pl_module.modules():
            if isinstance(m, Metric):
                m.persistent(True)  # metric accumulators travel with the checkpoint
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        env = trainer._accelerator_connector.cluster_environment
        if self.save_on_signal and isinstance(env, SLURMEnvironment):
            # The requeue is ours: last.ckpt in the run directory, then `scontrol requeue`. Lightning's
            # own (hpc_ckpt_N.ckpt, written in the middle of a step) is switched off.
            self._requeue, env.auto_requeue = env.auto_requeue, False
        if self.save_on_signal and threading.current_thread() is threading.main_thread():
            # Installed before Lightning registers its signal handlers (it keeps ours); ours only
            # takes note, and the run saves at the next batch boundary or where Lightning stops.
            self._old_usr1 = signal.signal(signal.SIGUSR1, self._on_sigusr1)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._old_usr1 is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._old_usr1)
            self._old_usr1 = None

    def _take_over_sigterm(self) -> None:
        """Lightning's SIGTERM handler broadcasts over the process group from inside the handler, which
        deadlocks DDP ranks that are in another collective; ours only takes note (Lightning still
        shares rank 0's flag at every batch start, and on_train_batch_end shares any rank's every
        signal_check_every_n_batches batches)."""
        if self.save_on_signal and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        trainer = self._trainer
        if trainer is None:
            return
        connector = trainer._signal_connector
        if not connector.received_sigterm and trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(signum)  # forward to the processes this one launched
        connector.received_sigterm = True

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over_sigterm()

    def _on_sigusr1(self, signum: int, frame: Any) -> None:
        self._sigusr1 = True
        if self._trainer is not None:  # Lightning's loops stop where they check for SIGTERM (validation too)
            self._trainer._signal_connector.received_sigterm = True

    @property
    def _seed(self) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    # --- training -------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over_sigterm()
        loaded, self._loaded = self._loaded, None
        resumed_mid_epoch = (loaded is not None and loaded["epoch"] == trainer.current_epoch
                             and 0 < loaded["batches_done"] < trainer.num_training_batches)
        installed = self._install_samplers(trainer)
        at_epoch_start = loaded is not None and not resumed_mid_epoch
        if at_epoch_start and loaded.get("rng") is not None:
            # A run left alone creates the epoch's loader iterator (which draws its base seed from
            # the global RNG) after the state this checkpoint holds: restore first, then iterate.
            set_rng_state(loaded["rng"])
            loaded["rng"] = None
            installed = True
        if resumed_mid_epoch:
            for dl in _train_loaders(trainer):
                if isinstance(getattr(dl.batch_sampler, "sampler", None), ResumableSampler):
                    dl.batch_sampler.sampler.skip = (loaded["epoch"], loaded["batches_done"])
            self._pending_logs = loaded.get("logged")
            rank_zero_info(f"ExactResume: continuing epoch {loaded['epoch']} after batch {loaded['batches_done']}")
        if installed and trainer.fit_loop._data_fetcher is not None:
            iter(trainer.fit_loop._data_fetcher)  # the fetcher's iterator predates the new sampler
        if loaded is not None and loaded.get("rng") is not None:
            set_rng_state(loaded["rng"])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # loaders re-created during training (reload_dataloaders_every_n_epochs, e.g. a new batch size)
        if self._install_samplers(trainer) and trainer.fit_loop._data_fetcher is not None:
            iter(trainer.fit_loop._data_fetcher)

    def _install_samplers(self, trainer: pl.Trainer) -> bool:
        installed = False
        for dl in _train_loaders(trainer):
            bs = dl.batch_sampler
            if not isinstance(bs, BatchSampler) or isinstance(bs.sampler, ResumableSampler):
                continue
            bs.sampler = ResumableSampler(bs.sampler, bs.batch_size, self._seed, trainer.global_rank, dl.dataset,
                                          lambda: trainer.current_epoch, self.reseed_augment)
            installed = True
        return installed

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._pending_logs is not None:
            _merge_logged(trainer, self._pending_logs)
            self._pending_logs = None
        if not self.save_on_signal:
            return
        # Python flags set by the signal handlers: reading them costs nothing
        sigterm, sigusr1 = bool(trainer.received_sigterm), self._sigusr1
        if trainer.world_size > 1:
            # Saving is collective, so every rank must decide alike: on a schedule all ranks keep.
            # Between checks a signal on rank 0 reaches all ranks through Lightning's broadcast at
            # the next batch start, and on_exception saves there.
            self._batches += 1
            if self._batches % self.signal_every:
                return
            flags = torch.tensor([float(sigterm), float(sigusr1)], device=pl_module.device)
            flags = trainer.strategy.reduce(flags, reduce_op="sum")  # any rank signalled: all save together
            sigterm, sigusr1 = bool(flags[0] > 0), bool(flags[1] > 0)
        if not (sigterm or sigusr1):
            return
        self._stop_and_save(trainer, "at the end of a batch", sigusr1)
        # Lightning stops with SIGTERMException at the end of this batch, after logging it, on every rank.
        trainer._signal_connector.received_sigterm = True

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        # A stop signal during fit's validation waits until the validation ends: the plateau scheduler,
        # early stopping and the best checkpoint read it, and a checkpoint from the middle of a
        # validation does not resume to the same run. Lightning checks the flag right after this hook.
        if self.save_on_signal and trainer.state.fn == "fit" and trainer.received_sigterm:
            self._deferred = True
            trainer._signal_connector.received_sigterm = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._deferred:
            self._deferred = False
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A stop signal that Lightning acted on elsewhere (validation, epoch end, during a checkpoint
        write): save ``last.ckpt`` where the loops stopped, unless the batch end already did."""
        if (not self.save_on_signal or self.saved_on_signal is not None or self._trainer is None
                or type(exception).__name__ != "SIGTERMException"):
            return
        if self._last_is_current(trainer):  # stopped at an epoch end whose last.ckpt is written
            rank_zero_info(f"ExactResume: stop signal received; {self._last_path(trainer)} is current")
            if self._sigusr1 and self._requeue and trainer.is_global_zero:
                requeue_slurm_job()
            return
        self._stop_and_save(trainer, "where training stopped", self._sigusr1)

    def _last_is_current(self, trainer: pl.Trainer) -> bool:
        cb = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath
                   and c.monitor is None), None)
        if cb is None or not cb.last_model_path and not cb.best_model_path:
            return False
        path = Path(self._last_path(trainer))
        if not path.is_file():
            return False
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return saved.get("global_step") == trainer.global_step and saved.get("epoch") == trainer.current_epoch

    def _stop_and_save(self, trainer: pl.Trainer, where: str, sigusr1: bool) -> None:
        path = self._save_last(trainer)
        rank_zero_info(f"ExactResume: {'SIGUSR1' if sigusr1 else 'SIGTERM'} received; saved {path} {where}; "
                       "resume with --ckpt_path last (make train ... RESUME=1), or --run <this run>")
        if sigusr1 and self._requeue and trainer.is_global_zero:
            requeue_slurm_job()
        self._sigusr1 = False

    @staticmethod
    def _last_path(trainer: pl.Trainer) -> str:
        cb = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath), None)
        if cb is not None:
            return str(Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}")
        return str(Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt")

    def _save_last(self, trainer: pl.Trainer) -> str:
        cb = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath), None)
        path = self._last_path(trainer)
        trainer.save_checkpoint(path)
        if cb is not None:
            cb.last_model_path = path
        self.saved_on_signal = path
        return path

    # --- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"rng": rng_state(), "epoch": trainer.current_epoch, "batches_done": int(progress.processed),
                "logged": _logged_accumulators(trainer), "seed": self._seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict) if state_dict else None


def requeue_slurm_job() -> int:
    """``scontrol requeue`` this SLURM job (array task aware); the requeued job resumes its own run."""
    import subprocess

    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else os.environ["SLURM_JOB_ID"]
    result = subprocess.call(["scontrol", "requeue", job])
    rank_zero_info(f"ExactResume: requeued SLURM job {job}" if result == 0
                   else f"ExactResume: `scontrol requeue {job}` failed with exit code {result}")
    return result


# --------------------------------------------------------------------------------- logged means
def _logged_accumulators(trainer: pl.Trainer) -> dict[str, Any]:
    """Epoch accumulators of tensors logged with ``on_epoch=True`` during training."""
    out = {}
    for key, rm in trainer.fit_loop.epoch_loop._results.items():
        meta = getattr(rm, "meta", None)
        if meta is None or not rm.is_tensor or not meta.on_epoch:
            continue
        reduce = ("mean" if meta.is_mean_reduction else "sum" if meta.is_sum_reduction
                  else "max" if meta.is_max_reduction else "min" if meta.is_min_reduction else None)
        if reduce is None:
            continue
        out[key] = {"reduce": reduce, "value": rm.value.detach().clone().cpu(),
                    "cumulated_batch_size": rm.cumulated_batch_size.detach().clone().cpu()
                    if hasattr(rm, "cumulated_batch_size") else None}
    return out


def _merge_logged(trainer: pl.Trainer, saved: dict[str, Any]) -> None:
    """Add the interrupted epoch's accumulators to the freshly created ones after a resume."""
    results = trainer.fit_loop.epoch_loop._results
    for key, s in saved.items():
        rm = results.get(key)
        if rm is None:
            continue
        value = s["value"].to(rm.value.device, rm.value.dtype)
        if s["reduce"] in ("mean", "sum"):
            rm.value += value
            if s["cumulated_batch_size"] is not None and hasattr(rm, "cumulated_batch_size"):
                rm.cumulated_batch_size += s["cumulated_batch_size"].to(rm.cumulated_batch_size.device)
        elif s["reduce"] == "max":
            rm.value = torch.maximum(rm.value, value)
        else:
            rm.value = torch.minimum(rm.value, value)


# --------------------------------------------------------------------------------- fault injection
class Preempt(Callback):
    """Rehearse a pre-emption: send a real signal to this process once training reaches a step.

    ``boneage fit ... --trainer.callbacks+=boneage.resume.Preempt --trainer.callbacks.at_step=30``
    then ``make train EXP=... RESUME=1`` shows that the job survives. Fires only in a run that
    started before ``at_step``, so the resumed run does not stop again.

    Args:
        at_step: the global step from which the signal is sent.
        signal_name: SIGTERM (pre-emption), SIGUSR1 (SLURM's time-limit warning), SIGINT, or
            SIGKILL (a node failure: nothing can be saved, the last periodic last.ckpt is what is left).
        phase: where it lands: ``train`` (after a training batch), ``validation`` (after a
            validation batch) or ``checkpoint`` (while a checkpoint is being written).
    """

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT", "SIGKILL")
    PHASES = ("train", "validation", "checkpoint")

    def __init__(self, at_step: int, signal_name: str = "SIGTERM", phase: str = "train") -> None:
        if signal_name not in self.SIGNALS:
            raise ValueError(f"signal_name must be one of {self.SIGNALS}, got {signal_name!r}")
        if phase not in self.PHASES:
            raise ValueError(f"phase must be one of {self.PHASES}, got {phase!r}")
        self.at_step = at_step
        self.signal_name = signal_name
        self.phase = phase
        self._start: int | None = None
        self._fired = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = trainer.global_step

    def _maybe_fire(self, trainer: pl.Trainer, phase: str) -> None:
        if (phase == self.phase and not self._fired and self._start is not None and not trainer.sanity_checking
                and self._start < self.at_step <= trainer.global_step):
            self._fired = True
            os.kill(os.getpid(), getattr(signal, self.signal_name))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._maybe_fire(trainer, "train")

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._maybe_fire(trainer, "validation")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._maybe_fire(trainer, "checkpoint")
