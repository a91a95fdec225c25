"""`boneage serve`'s JSON API through FastAPI's TestClient: predictions, heat maps, checks of uploads,
nothing stored unless asked, no patient identifiers in answers."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from predict_helpers import IDENTIFIERS, identified_dicom, tiny_runs

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from boneage.predict import load_predictor  # noqa: E402
from boneage.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return tiny_runs(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def predictors(trained):
    runs_dir, regressor, tjnet, _ = trained
    return [load_predictor(regressor, runs_dir), load_predictor(tjnet, runs_dir)]


@pytest.fixture(scope="module")
def client(predictors):
    return TestClient(create_app(predictors, max_bytes=200_000))


@pytest.fixture(scope="module")
def hand(trained) -> bytes:
    return (trained[3] / "boneage-training-dataset" / "1377.png").read_bytes()


def decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_health_page_and_openapi(client, trained):
    _, regressor, tjnet, _ = trained
    assert client.get("/health").json() == {"status": "ok", "runs": [regressor, tjnet]}
    assert "/api/predict" in client.get("/openapi.json").json()["paths"]
    page = client.get("/").text
    assert regressor in page and tjnet in page and "test MAE" in page  # the model cards


def test_upload_gives_age_spread_and_heat_map(client, hand, trained):
    answer = client.post("/api/predict", files={"file": ("x.png", hand, "image/png")}, data={"sex": "F"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert 0 < body["age_months"] < 300 and abs(body["age_years"] - body["age_months"] / 12) < 0.01
    assert body["sex"] == "F" and body["sex_source"] == "user"
    assert set(body["runs"]) == {trained[1], trained[2]} and body["age_sd_months"] >= 0
    heat = decoded(body["heatmap"])
    assert heat.mode == "RGB" and heat.size == decoded(body["image"]).size


def test_sex_from_the_model_or_the_dicom_header_and_no_identifiers(client, hand, trained, tmp_path):
    guessed = client.post("/api/predict", files={"file": ("x.png", hand, "image/png")}, data={"sex": "auto"}).json()
    assert guessed["sex"] in ("M", "F") and guessed["sex_source"] == "model"  # TJ-Net's own sex classifier
    dicom = identified_dicom(tmp_path / "a.dcm", trained[3] / "boneage-training-dataset" / "1378.png").read_bytes()
    answer = client.post("/api/predict", files={"file": ("DOE_JANE.dcm", dicom, "application/dicom")})
    assert answer.status_code == 200, answer.text
    assert answer.json()["sex"] == "F" and answer.json()["sex_source"] == "dicom"
    assert not any(s in answer.text for s in [*IDENTIFIERS.values(), "DOE", "JANE"])


def test_uploads_are_checked_with_clear_errors(client, hand):
    text = client.post("/api/predict", files={"file": ("notes.png", b"hello, not an image", "image/png")})
    assert text.status_code == 415 and "PNG, JPEG or DICOM" in text.json()["detail"]
    big = client.post("/api/predict", files={"file": ("big.png", hand + b"\0" * 200_000, "image/png")})
    assert big.status_code == 413 and "--max-mb" in big.json()["detail"]
    broken = client.post("/api/predict", files={"file": ("b.png", hand[:200], "image/png")}, data={"sex": "M"})
    assert broken.status_code == 422
    bad_sex = client.post("/api/predict", files={"file": ("x.png", hand, "image/png")}, data={"sex": "X"})
    assert bad_sex.status_code == 422


def test_nothing_is_stored_unless_asked(predictors, hand, tmp_path):
    plain = TestClient(create_app(predictors))
    refused = plain.post("/api/predict", files={"file": ("x.png", hand, "image/png")},
                         data={"sex": "F", "store": "true"})
    assert refused.status_code == 400 and "--store" in refused.json()["detail"]
    store = tmp_path / "kept"
    keeping = TestClient(create_app(predictors, store=store))
    keeping.post("/api/predict", files={"file": ("x.png", hand, "image/png")}, data={"sex": "F"})
    assert not store.exists()
    kept = keeping.post("/api/predict", files={"file": ("secret_name.png", hand, "image/png")},
                        data={"sex": "F", "store": "true"}).json()
    assert sorted(p.name for p in store.iterdir()) == [f"{kept['stored']}.json", f"{kept['stored']}.png"]
