"""``boneage-phantom <generator> --out DIR --n N --seed S ...``

``--format dicom`` (rsna, tongji, bones, scintigraphy) writes the data set as the DICOM files real scanners
produce (hands: DX/CR ``{id}.dcm``, a third MONOCHROME1, 12 bits stored; bone scans: two-frame NM
files), with synthetic patient ids only; PNG is the default. ``--format series`` / ``--format nifti``
(wholebody_ct) writes each body as a CT volume: a folder of axial DICOM slices or a ``.nii.gz``.

``boneage-phantom experiment [NAME ...] [--dry-run] [-- FLAGS]``: the default phantom of an
experiment, where its YAML reads its data (``make phantoms EXP=NAME``); FLAGS go to the generator.

Every module in :mod:`boneage.phantoms` that defines ``NAME``, ``add_arguments(parser)``
and ``main(args)`` becomes a sub-command, so a new generator needs no registry edit.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import boneage.phantoms as _pkg


def generators() -> dict:
    """Map of sub-command name -> generator module."""
    found = {}
    for info in pkgutil.iter_modules(_pkg.__path__):
        if info.name in {"cli", "common"}:
            continue
        module = importlib.import_module(f"boneage.phantoms.{info.name}")
        if all(hasattr(module, a) for a in ("NAME", "add_arguments", "main")):
            found[module.NAME] = module
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="boneage-phantom",
                                     description="Write a phantom data set in a real on-disk format.")
    sub = parser.add_subparsers(dest="generator", required=True)
    for name, module in generators().items():
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_module=module)
    argv = list(sys.argv[1:] if argv is None else argv)
    # flags after "--" are for the generator an experiment's phantom runs (boneage-phantom experiment)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1:]
    if extra and args.generator != "experiment":
        parser.error(f"'-- {' '.join(extra)}': generator flags after -- are for 'experiment' only")
    args.generator_args = extra
    return args._module.main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
