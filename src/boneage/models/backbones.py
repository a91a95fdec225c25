"""Backbone factory: timm models by name (and torchvision's GoogLeNet), offline only.

``create_backbone(name, in_chans=1, pretrained_path=None)`` returns a feature extractor whose
forward gives pooled features ``[B, num_features]``. Pretrained weights come only from a local
file; nothing is downloaded. A missing file is a FileNotFoundError that says where such weights
come from.

Weights files (:func:`load_weights`), as users have them:

- torchvision ``.pth`` state dicts (``resnet50-0676ba61.pth``, ``googlenet-1378be20.pth``,
  ``vgg16_bn-6c64b313.pth``, ``inception_v3_google-0cc3c7bd.pth``, ...): for timm models the
  model's own timm conversion applies (VGG's ``classifier.0/3`` become ``pre_logits.fc1/fc2``);
- timm ``.safetensors`` / ``.bin`` (``model.safetensors`` / ``pytorch_model.bin`` of the Hugging
  Face hub ``timm/<name>``) and any ``torch.save(model.state_dict())``;
- a Lightning checkpoint of this project (``lightning_logs/<exp>/<run>/checkpoints/*.ckpt``): the
  tensors under the prefix that holds this backbone (``network.backbone.``, ...), found by name.

Matching is exact: after dropping the ImageNet classifier and the auxiliary classifiers
(Inception-V3's ``AuxLogits``, GoogLeNet's ``aux1``/``aux2``), which the network replaces, every
tensor of the network must come from the file and every tensor of the file must have a place,
with the same shape; otherwise a :class:`data_modules.base.DataError` names the keys (and says
when the file is of another architecture altogether). The one exception: batch-norm
``num_batches_tracked`` counters, absent from files saved before PyTorch 0.4.1 (torchvision's
VGG files), start at 0. RGB first-layer weights become 1-channel by summing over the colour
channels (timm's ``adapt_input_conv``): a gray image x then gives the response of the RGB image
(x, x, x), the ImageNet filters' own scale.
"""

from __future__ import annotations

import logging
import pickle
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import timm
import torch
from torch import nn

__all__ = ["TORCHVISION", "TorchvisionGoogLeNet", "create_backbone", "load_weights", "read_weights",
           "select_weights", "check_weights", "adapt_first_conv"]

log = logging.getLogger(__name__)

TORCHVISION = {"tv_googlenet"}
# Training-time auxiliary classifiers of torchvision's Inception-V3 and GoogLeNet files: the
# networks here have none, so their tensors are dropped like the ImageNet classifier.
AUX_HEADS = ("AuxLogits.", "aux1.", "aux2.")
SHOW = 6  # keys named in an error message (then "and N more")


def _missing(path: str | Path, name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"pretrained weights for backbone '{name}' not found at {path}. This framework never downloads: "
        f"fetch the file once on a machine with internet (e.g. timm.create_model('{name}', pretrained=True) and "
        "save its state_dict, or the model's safetensors/bin file from the Hugging Face hub "
        f"'timm/{name}'), copy it here and give its path, or set pretrained_path: null to train from scratch.")


def _error(message: str) -> Exception:
    from data_modules.base import DataError  # imported here: a network module needs no data stack

    return DataError(message)


def _names(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOW])
    return shown + (f" and {len(keys) - SHOW} more" if len(keys) > SHOW else "")


# ------------------------------------------------------------------------------ weights files
def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, a ``torch.save`` state dict (``.pth``, ``.bin``) or
    a checkpoint (its ``state_dict``; a timm training checkpoint's ``state_dict_ema`` is not used).

    A Lightning ``.ckpt`` that holds more than tensors (this project's checkpoints keep their
    hyper-parameters) is unpickled in full, as Lightning does when it resumes: give only
    checkpoints you trust.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                if path.suffix != ".ckpt":
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise _error(f"cannot read weights file {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
                     " (expected a .safetensors file, a torch.save state dict .pth/.bin, or a Lightning .ckpt)"
                     ) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        raise _error(f"{path} holds no tensors: expected a state dict (.pth/.bin/.safetensors) or a checkpoint")
    return tensors


def select_weights(state: Mapping[str, torch.Tensor], wanted: Iterable[str], path: str | Path,
                   name: str) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` under the key prefix that best matches the network's keys
    ``wanted``, prefix removed (``""`` for a plain state dict, ``network.backbone.`` for this
    project's checkpoints, ``module.`` for a DDP-wrapped save)."""
    wanted = set(wanted)
    counts: Counter[str] = Counter()
    for key in state:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in wanted:
                counts[".".join(parts[:i]) + ("." if i else "")] += 1
    if not counts:
        raise _error(f"{path} holds weights of another architecture, not '{name}': none of its tensors has a name "
                     f"of '{name}' (the file has {_names(list(state))}; '{name}' has {_names(sorted(wanted))})")
    best = max(counts.values())
    tops = sorted(p for p, c in counts.items() if c == best)
    if "" in tops:
        prefix = ""
    elif len(tops) == 1:
        prefix = tops[0]
    else:
        raise _error(f"{path} holds '{name}' weights {len(tops)} times (under {', '.join(tops)}): save the one "
                     "you want as its own state dict ({key[len(prefix):]: tensor for keys under that prefix}) "
                     "and give that file")
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def check_weights(expected: Mapping[str, Sequence[int]], found: Mapping[str, torch.Tensor], path: str | Path,
                  name: str, optional: Iterable[str] = ()) -> None:
    """Raise a DataError naming the missing, unexpected and differently shaped keys, if any.

    ``expected``: key -> shape the network needs; ``optional``: expected keys a file may lack."""
    optional = set(optional)
    missing = [k for k in expected if k not in found and k not in optional]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k].shape)} in the file, {tuple(expected[k])} here"
              for k in found if k in expected and tuple(found[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or shapes):
        return
    needed = len([k for k in expected if k not in optional])
    fit = needed - len(missing) - len(shapes)
    if fit < needed / 2:
        head = f"{path} holds weights of another architecture, not '{name}' ({fit} of its {needed} tensors fit)"
    else:
        head = f"{path} does not fit '{name}' exactly (another variant or width?)"
    parts = [f"missing {len(missing)} keys: {_names(missing)}" if missing else "",
             f"unexpected {len(unexpected)} keys: {_names(unexpected)}" if unexpected else "",
             f"{len(shapes)} shapes differ: {_names(shapes)}" if shapes else ""]
    raise _error(f"{head}: {'; '.join(p for p in parts if p)}")


def adapt_first_conv(state: dict[str, torch.Tensor], key: str, in_chans: int) -> None:
    """RGB (or other) kernels of the first convolution ``key`` to ``in_chans`` channels, in place:
    1 channel sums the colour channels (timm's ``adapt_input_conv``)."""
    weight = state.get(key)
    if weight is not None and weight.ndim == 4 and weight.shape[1] != in_chans:
        from timm.models import adapt_input_conv

        state[key] = adapt_input_conv(in_chans, weight, base_chans=weight.shape[1])


def load_weights(module: nn.Module, path: str | Path, name: str, first_conv: str | Sequence[str] | None = None,
                 heads: Sequence[str] = (), convert=None) -> None:
    """Load a weights file into ``module`` with exact key matching (see the module doc).

    Args:
        first_conv: name(s) of the first convolution, adapted to the module's input channels.
        heads: key prefixes of classifiers the module replaces (``"fc."``); dropped from the file
            where the module has no such key, as are the auxiliary classifiers.
        convert: ``state -> state`` renaming of another format into the module's (timm's
            per-model checkpoint filter).
    """
    own = module.state_dict()
    state = select_weights(read_weights(path), own, path, name)
    if convert is not None:
        state = convert(state)
    drop = tuple(heads) + AUX_HEADS
    state = {k: v for k, v in state.items() if k in own or not k.startswith(drop)}
    for conv in [first_conv] if isinstance(first_conv, str) else list(first_conv or []):
        if f"{conv}.weight" in own:
            adapt_first_conv(state, f"{conv}.weight", own[f"{conv}.weight"].shape[1])
    check_weights({k: v.shape for k, v in own.items()}, state, path, name,
                  optional=[k for k in own if k.endswith("num_batches_tracked")])
    module.load_state_dict(state, strict=True)
    log.info("loaded all %d tensors of %s from %s", len(own), name, path)


def _timm_convert(model: nn.Module):
    """timm's own filter for files of another layout (torchvision's VGG classifier -> pre_logits)."""
    source = sys.modules.get(type(model).__module__)
    fn = getattr(source, "checkpoint_filter_fn", None) or getattr(source, "_filter_fn", None)
    if fn is None:
        return None

    def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        try:
            return fn(state, model)
        except TypeError:  # filters that take the state dict alone
            return fn(state)

    return convert


# ------------------------------------------------------------------------------ backbones
class TorchvisionGoogLeNet(nn.Module):
    """torchvision GoogLeNet without aux heads, as a pooled feature extractor.

    Weights: torchvision's ``googlenet-1378be20.pth`` (its ``aux1``/``aux2`` and ``fc`` are
    dropped), or a checkpoint of this project, loaded exactly (:func:`load_weights`).
    """

    def __init__(self, in_chans: int = 1, pretrained_path: str | None = None) -> None:
        super().__init__()
        from torchvision.models import googlenet

        net = googlenet(weights=None, aux_logits=False, init_weights=pretrained_path is None)
        if in_chans != 3:
            conv = net.conv1.conv
            net.conv1.conv = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                       bias=False)
            nn.init.trunc_normal_(net.conv1.conv.weight, mean=0.0, std=0.01, a=-2, b=2)  # torchvision's init
        net.transform_input = False
        net.fc = nn.Identity()
        net.dropout = nn.Identity()
        self.net = net
        self.num_features = 1024
        if pretrained_path:
            load_weights(net, pretrained_path, "tv_googlenet", first_conv="conv1.conv", heads=("fc.",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def create_backbone(name: str, in_chans: int = 1, pretrained_path: str | None = None, **kwargs) -> nn.Module:
    """A pooled feature extractor (``.num_features``) by timm name, or ``tv_googlenet``."""
    if pretrained_path and not Path(pretrained_path).is_file():
        raise _missing(pretrained_path, name)
    if name in TORCHVISION:
        return TorchvisionGoogLeNet(in_chans, pretrained_path)
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise ValueError(f"unknown backbone {name!r}: use a timm model name (timm.list_models()) or one of "
                         f"{sorted(TORCHVISION)}")
    model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0, **kwargs)
    if pretrained_path:
        cfg = model.pretrained_cfg or {}
        heads = cfg.get("classifier") or ()
        heads = [heads] if isinstance(heads, str) else list(heads)
        load_weights(model, pretrained_path, name, first_conv=cfg.get("first_conv"),
                     heads=[f"{h}." for h in heads], convert=_timm_convert(model))
    # Models with a pre-logits head (MobileNetV3, EfficientNet-style conv_head) return
    # head_hidden_size features, not num_features: expose what forward really returns.
    model.num_features = getattr(model, "head_hidden_size", None) or model.num_features
    return model
