"""The Tongji-like second-population phantom: format, determinism, population differences."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from PIL import Image

from boneage.phantoms import tongji
from boneage.phantoms.cli import generators
from boneage.phantoms.common import noise_floor


def test_tongji_phantom_writes_generic_hospital_format(tmp_path):
    out = tongji.render(tmp_path / "a", n=24, seed=3, size=96, progress_bar=False)
    table = pd.read_csv(out / "labels.csv")
    assert list(table.columns) == ["image", "age_years", "sex"]
    assert set(table.sex) <= {"F", "M"} and table.age_years.between(0, 22).all()
    for rel in table.image:
        img = Image.open(out / rel)
        assert img.mode in {"L", "I;16", "I"} and min(img.size) > 50
    meta = json.loads((out / "phantom.json").read_text())
    assert meta["units"] == "years" and meta["label_file"] == "labels.csv"
    assert meta["noise_floor_mae"] == noise_floor(0.5)
    truth = pd.read_csv(out / "phantom_truth.csv")
    # written label = truth + noise of the stated sigma (clipping aside)
    resid = (table.age_years - truth.true_age_years).to_numpy()
    assert abs(resid.mean()) < 0.4 and 0.2 < resid.std() < 0.9
    assert "tongji" in generators()


def test_tongji_phantom_is_deterministic_by_seed(tmp_path):
    a = tongji.render(tmp_path / "a", n=5, seed=7, size=64, progress_bar=False)
    b = tongji.render(tmp_path / "b", n=5, seed=7, size=64, progress_bar=False)
    c = tongji.render(tmp_path / "c", n=5, seed=8, size=64, progress_bar=False)
    ta, tb, tc = (pd.read_csv(p / "labels.csv") for p in (a, b, c))
    pd.testing.assert_frame_equal(ta, tb)
    assert not ta.age_years.equals(tc.age_years)
    for rel in ta.image:
        assert np.array_equal(np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel)))


def test_tongji_population_matures_faster_than_rsna_for_the_same_label(tmp_path, monkeypatch):
    """Same true age, same sex: the Tongji-like phantom draws a more mature hand than the RSNA
    phantom (another population's tempo), girls ahead of boys in both. Read from the maturity
    each phantom's render asks the shared hand renderer for."""
    from boneage.phantoms import rsna

    asked: list[float] = []

    def spy(maturity, *args, **kwargs):
        asked.append(float(maturity))
        return render_hand(maturity, *args, **kwargs)

    render_hand = rsna.render_hand
    monkeypatch.setattr(tongji, "render_hand", spy)
    monkeypatch.setattr(rsna, "render_hand", spy)
    tongji.render(tmp_path / "tj", n=16, seed=1, size=32, progress_bar=False)
    tj = pd.read_csv(tmp_path / "tj" / "phantom_truth.csv").assign(maturity=asked[:16])
    tj["per_month"] = tj.maturity / (tj.true_age_years * 12.0)
    asked.clear()
    rsna.render(tmp_path / "rsna", n=16, seed=1, size=32, progress_bar=False)
    rs = pd.read_csv(tmp_path / "rsna" / "phantom_truth.csv").assign(maturity=asked[:16])
    rs["per_month"] = rs.maturity / rs.true_boneage
    tj_rate = tj.groupby("sex").per_month.agg(["min", "max"])
    rs_rate = rs.groupby(rs.male.map({True: "M", False: "F"})).per_month.agg(["min", "max"])
    for sex in ("F", "M"):
        assert tj_rate.loc[sex, "min"] > rs_rate.loc[sex, "max"], (sex, tj_rate, rs_rate)
    assert tj_rate.loc["F", "min"] > tj_rate.loc["M", "max"]  # girls ahead of boys
    assert rs_rate.loc["F", "min"] > rs_rate.loc["M", "max"]
