"""Tiny trained runs and phantom images with patient identifiers, shared by the predict/serve tests.

The runs are trained once per test session (in the session's base temp folder), whichever test file
asks first: a regressor of the RSNA experiment and a TJ-Net (an ensemble of a regression and a
classification system; TJ-Net also predicts the sex), each three steps of a test-sized network on a
phantom, enough to give finite predictions and heat maps.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# identifiers a DICOM may carry that must never leave (tests search every output for them)
IDENTIFIERS = {"PatientName": "DOE^JANE", "PatientID": "MRN-778899", "PatientBirthDate": "20120304",
               "AccessionNumber": "ACC-55443"}
SECRET_FILE = "doe_jane_mrn778899.dcm"


def _fit(runs: Path, data: Path, experiment: str, config: list[str], seed: int) -> str:
    from boneage.cli import RUN_ENV, main
    from boneage.runs import find_runs

    os.environ.pop(RUN_ENV, None)
    main(["fit", *config, "--experiment", experiment, "--seed_everything", str(seed),
          "--data.init_args.data_dir", str(data), "--data.init_args.num_workers", "0",
          "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
          "--trainer.num_sanity_val_steps", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--runs_dir", str(runs)])
    return find_runs(runs, experiment)[-1].label


def tiny_runs(base: Path) -> tuple[Path, str, str, Path]:
    """(runs folder, the regressor's run label, the TJ-Net's run label, the phantom's data folder)."""
    from boneage.phantoms.rsna import render
    from boneage.runs import find_runs

    runs, data = base / "predict-runs", base / "predict-phantom"
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        if not (data / "phantom.json").is_file():
            render(data, n=40, seed=3, size=64, progress_bar=False)
        regressor = ["--config", "experiments/regressor_rsna.yaml",
                     "--config", "tests/configs/scale/regressor_tiny.yaml",
                     "--model.init_args.network.init_args.dropout", "0.0"]
        if not find_runs(runs, "tiny_regressor"):
            _fit(runs, data, "tiny_regressor", regressor, seed=1)
        if not find_runs(runs, "tiny_tjnet"):
            _fit(runs, data, "tiny_tjnet", ["--config", "experiments/tjnet_rsna.yaml", "--config",
                                            "tests/configs/tjnet_rsna.yaml", "--data.init_args.image_size", "[32, 32]"],
                 seed=1)
    finally:
        os.chdir(cwd)
    return runs, find_runs(runs, "tiny_regressor")[-1].label, find_runs(runs, "tiny_tjnet")[-1].label, data


def identified_dicom(path: Path, source_png: Path) -> Path:
    """A phantom hand (from ``source_png``) as a DICOM carrying a patient's name, id, birth date and
    accession number, and sex F."""
    import numpy as np
    from PIL import Image

    from boneage.phantoms.common import save_dicom

    pixels = np.asarray(Image.open(source_png).convert("L"), dtype=np.uint16) * 16
    save_dicom(path, pixels, modality="DX", sop_class="1.2.840.10008.5.1.4.1.1.1.1", patient_id="X", sex="F",
               bits_stored=12, **IDENTIFIERS)
    return path
