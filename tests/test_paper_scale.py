"""Paper scale (boneage.paperscale): every experiment YAML takes real steps at its own image size,
and the GPU check's dry run produces its table. Both are slow (minutes per experiment on a CPU);
the PGGAN growth overrides are checked fast."""

from __future__ import annotations

import json
import math

import pytest

from boneage import paperscale
from boneage.systems.pggan import GrowthSchedule


def test_pggan_overrides_grow_to_1024_with_one_step_per_phase():
    config = paperscale.load_config("pggan_rsna")
    args = paperscale.pggan_growth_args(config, batch=4)
    opts = dict(zip(args[::2], args[1::2], strict=True))
    batch_sizes = {int(k): v for k, v in json.loads(opts["--model.init_args.batch_sizes"]).items()}
    schedule = GrowthSchedule(1024, 4, int(opts["--model.init_args.stabilise_images"]),
                              int(opts["--model.init_args.fade_images"]), batch_sizes)
    shown, seen = 0, []
    while shown < int(opts["--model.init_args.total_images"]):
        state = schedule.state(shown)
        seen.append((state.resolution, state.phase))
        shown += state.batch_size
    assert seen == [(4, "stabilise")] + [(4 * 2**i, p) for i in range(1, 9) for p in ("fade", "stabilise")]


@pytest.fixture(scope="session")
def paper_out(tmp_path_factory):
    return tmp_path_factory.mktemp("paper-scale")  # phantoms shared by all experiments


@pytest.mark.slow
@pytest.mark.parametrize("experiment", paperscale.experiment_names())
def test_experiment_takes_steps_at_paper_size(experiment, paper_out):
    (row,) = [r for r in paperscale.paper_steps([experiment], paper_out) if r["name"] == experiment]
    assert not row.get("error"), f"{experiment}: {row['error']} (log: {row['log']})"
    if row["growth"]:  # one step of 4 images per phase: 17 phases from 4 to 1024 px
        assert (row["images_shown"], row["resolution"]) == (17 * 4, 1024), row
    else:
        assert row["steps"] == 2, f"{experiment}: {row['steps']} steps, wanted 2"
    assert row["loss_names"] and row["losses_finite"], f"{experiment}: losses {row['losses']}"
    data = paperscale.load_config(experiment)["data"]["init_args"]
    assert row["image_shape"][2:] == (data.get("crop_size") or data["image_size"])  # the paper's input size
    assert row["batch"] == (4 if row["growth"] else 2)
    assert row["params"] > 0 and row["peak_mib"] > 0 and math.isfinite(row["step_ms_median"])


@pytest.mark.slow
def test_gpu_check_dry_run_has_a_row_per_family(tmp_path):
    result = paperscale.gpu_check(tmp_path, dry=True)
    table = (tmp_path / "gpu_check.md").read_text()
    for fam in paperscale.GPU_FAMILIES:
        rows = [r for r in result["rows"] if r["family"] == fam.name]
        assert len(rows) == 2, f"{fam.name}: {len(rows)} rows"
        for row in rows:
            assert not row.get("error"), f"{fam.name} {row['precision']}: {row['error']} (log: {row.get('log')})"
            assert row["steps"] >= 2 and row["losses_finite"]
        assert table.count(f"| {fam.name} |") == 2
    assert result["bench_error"] is None and result["bench"], result["bench_error"]
