"""``boneage serve``: a small local web app and JSON API over trained runs.

    boneage serve --run demo_rsna/<run id> [--run ...] [--host 127.0.0.1] [--port 8000] [--max-mb 20]
                  [--tta] [--store DIR]

Open http://127.0.0.1:8000, upload a PNG, JPEG or DICOM radiograph, give the sex or let it come from the
DICOM header or the model (TJ-Net runs predict it), and see the bone age, the spread over runs (the
uncertainty, with several runs), the Grad-CAM heat map and each run's model card.

API (OpenAPI description at ``/openapi.json``, interactive at ``/docs``): ``GET /health``,
``GET /api/models`` (model cards), ``POST /api/predict`` (multipart: ``file``, ``sex`` auto|M|F,
``store`` true|false). Uploads over ``--max-mb`` get 413, other types than PNG/JPEG/DICOM 415, an image
that cannot be read or lacks a needed sex 422. Uploads live in a temporary folder for the request only;
they (and the answer) are kept only when the server was started with ``--store DIR`` and the request asks
for it (``store=true``), under a hash of the content, never under the uploaded file name. The answer
holds no DICOM patient name, id, birth date or accession number. The server binds to 127.0.0.1 unless
``--host`` says otherwise.

Chose FastAPI with one static page over Gradio: the page is a few lines of HTML and JavaScript in this
file, the API is plain JSON with an OpenAPI description for free, and FastAPI's TestClient tests it
without a server; Gradio would add a large dependency, its own front end and its own API shape.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from boneage.predict import Predictor, card_html, data_uri, gray_png, load_predictor, overlay_png, predict
from boneage.runs import RUNS_DIR

# what an upload may be, by its first bytes: (suffix it is read with, check)
SIGNATURES = {
    "png": (".png", lambda b: b.startswith(b"\x89PNG\r\n\x1a\n")),
    "jpeg": (".jpg", lambda b: b.startswith(b"\xff\xd8\xff")),
    "dicom": (".dcm", lambda b: b[128:132] == b"DICM"),
}


def sniff(head: bytes) -> str | None:
    """``png``, ``jpeg`` or ``dicom`` from a file's first bytes (a DICOM file's preamble and ``DICM``)."""
    return next((kind for kind, (_, test) in SIGNATURES.items() if test(head)), None)


class Prediction(BaseModel):
    """The answer to one upload."""

    age_months: float
    age_years: float
    age_sd_months: float | None  # spread over runs; None with one run
    sex: str | None               # M or F; None when no run uses the sex
    sex_source: str               # user, dicom, model or unused
    runs: dict[str, float]        # each run's age in months
    heatmap: str                  # PNG data URI: Grad-CAM on the network input
    image: str                    # PNG data URI: the network input
    stored: str | None = None     # the stored upload's name, when asked for


def create_app(predictors: Sequence[Predictor], max_bytes: int = 20 * 2 ** 20, store: str | Path | None = None,
               tta: bool = False):
    """The FastAPI app over loaded runs (:func:`boneage.predict.load_predictor`)."""
    from data_modules.base import DataError

    lock = threading.Lock()  # one prediction at a time: Grad-CAM hooks live on the shared networks
    cards = [p.card for p in predictors]
    can_guess = any(p.predicts_sex for p in predictors)
    needs_sex = any(p.needs_sex for p in predictors)

    app = FastAPI(title="boneage", description="Bone age from a hand (or CT, scintigraphy) image with "
                  "trained runs of the boneage framework.", version="1")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "runs": [c["run"] for c in cards]}

    @app.get("/api/models")
    def models() -> list[dict]:
        return cards

    @app.post("/api/predict", response_model=Prediction,
              responses={413: {"description": "upload too large"}, 415: {"description": "not PNG/JPEG/DICOM"},
                         422: {"description": "unreadable image, or a sex is needed"}})
    def predict_upload(file: Annotated[UploadFile, File()], sex: Annotated[str, Form()] = "auto",
                       store_upload: Annotated[bool, Form(alias="store")] = False) -> Prediction:
        if sex not in ("auto", "M", "F"):
            raise HTTPException(422, f"sex must be auto, M or F, got {sex!r}")
        data = file.file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(413, f"the upload is larger than {max_bytes / 2 ** 20:g} MB (server option --max-mb)")
        kind = sniff(data[:132])
        if kind is None:
            raise HTTPException(415, "the upload is not a PNG, JPEG or DICOM file")
        if store_upload and store is None:
            raise HTTPException(400, "this server stores nothing: start it with --store DIR to keep uploads")
        with tempfile.TemporaryDirectory(prefix="boneage-serve-") as tmp:
            path = Path(tmp) / f"upload{SIGNATURES[kind][0]}"
            path.write_bytes(data)
            table = pd.DataFrame({"path": [str(path)], "sex": [np.nan], "sex_source": [""]})
            try:
                with lock:
                    result = predict(predictors, table, sex=None if sex == "auto" else sex, tta=tta, sex_overrides=True)
            except DataError as err:
                raise HTTPException(422, str(err).replace(str(path), "the upload")) from None
        answer = Prediction(
            age_months=round(float(result.months[0]), 2), age_years=round(float(result.months[0]) / 12, 3),
            age_sd_months=None if np.isnan(result.sd_months[0]) else round(float(result.sd_months[0]), 2),
            sex=None if np.isnan(result.sex[0]) else ("M" if result.sex[0] > 0.5 else "F"),
            sex_source={"cli": "user"}.get(result.sex_source[0], result.sex_source[0]),
            runs={k: round(float(v[0]), 2) for k, v in result.per_run.items()},
            heatmap=data_uri(overlay_png(result.shown[0], result.heat[0])),
            image=data_uri(gray_png(result.shown[0])))
        if store_upload:
            name = hashlib.sha1(data).hexdigest()[:16]
            folder = Path(store)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}{SIGNATURES[kind][0]}").write_bytes(data)
            answer.stored = name
            (folder / f"{name}.json").write_text(json.dumps(answer.model_dump(exclude={"heatmap", "image"}), indent=2))
        return answer

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        auto = ("from the DICOM header, else the model" if can_guess else "from the DICOM header") if needs_sex \
            else "not used by these models"
        return PAGE.replace("{{AUTO}}", html.escape(auto)).replace(
            "{{CARDS}}", "".join(card_html(c) for c in cards)).replace("{{MAXMB}}", f"{max_bytes / 2 ** 20:g}")

    return app


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>boneage</title>
<style>
body{font-family:sans-serif;margin:1.5em;max-width:60em;color:#222}
form{display:flex;gap:1em;align-items:center;flex-wrap:wrap;padding:1em;background:#f3f5f7;border-radius:6px}
#result{display:none;gap:1.5em;margin-top:1.2em}
#result img{height:280px;border:1px solid #ccc}
#age{font-size:2em;font-weight:bold}
#error{color:#b00020;margin-top:1em}
table{border-collapse:collapse;margin:0.5em 0 1em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:0.9em}
</style></head>
<body>
<h1>Bone age</h1>
<p>Upload a radiograph (PNG, JPEG or DICOM, up to {{MAXMB}} MB). Nothing is kept after the answer.</p>
<form id="form">
  <input type="file" id="file" name="file" accept=".png,.jpg,.jpeg,.dcm,.dicom,image/png,image/jpeg,application/dicom">
  <label>sex <select id="sex" name="sex">
    <option value="auto">auto ({{AUTO}})</option><option value="F">female</option><option value="M">male</option>
  </select></label>
  <button type="submit" id="submit">Predict</button>
</form>
<div id="error"></div>
<div id="result">
  <div><div id="age"></div><div id="sd"></div><div id="sexused"></div><div id="runs"></div></div>
  <div><img id="input" alt="network input"><br><small>network input</small></div>
  <div><img id="heatmap" alt="Grad-CAM heat map"><br><small>Grad-CAM of the predicted age</small></div>
</div>
<h2>Models</h2>
<div style="display:flex;gap:1em;flex-wrap:wrap">{{CARDS}}</div>
<p><a href="/docs">API (OpenAPI)</a></p>
<script>
const form = document.getElementById("form");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("error"), result = document.getElementById("result");
  error.textContent = ""; result.style.display = "none";
  const file = document.getElementById("file").files[0];
  if (!file) { error.textContent = "choose an image first"; return; }
  const body = new FormData();
  body.append("file", file);
  body.append("sex", document.getElementById("sex").value);
  document.getElementById("submit").disabled = true;
  try {
    const response = await fetch("/api/predict", {method: "POST", body});
    const answer = await response.json();
    if (!response.ok) { error.textContent = answer.detail || response.statusText; return; }
    document.getElementById("age").textContent =
      answer.age_years.toFixed(1) + " years (" + answer.age_months.toFixed(1) + " months)";
    document.getElementById("sd").textContent = answer.age_sd_months === null ? "one run: no spread"
      : "spread over runs: \\u00b1 " + answer.age_sd_months.toFixed(1) + " months (sd)";
    document.getElementById("sexused").textContent =
      answer.sex ? "sex " + answer.sex + " (" + answer.sex_source + ")" : "sex not used";
    document.getElementById("runs").textContent = Object.entries(answer.runs)
      .map(([run, months]) => run + ": " + months.toFixed(1) + " months").join("; ");
    document.getElementById("input").src = answer.image;
    document.getElementById("heatmap").src = answer.heatmap;
    result.style.display = "flex";
  } catch (err) {
    error.textContent = "no answer from the server: " + err;
  } finally {
    document.getElementById("submit").disabled = false;
  }
});
</script>
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="boneage serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True,
                        help="<experiment>/<run id> (or <experiment>: its newest fit run); repeat for an ensemble")
    parser.add_argument("--runs-dir", "--runs_dir", default=RUNS_DIR)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-mb", type=float, default=20.0, help="largest upload in MB")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (see boneage predict-folder)")
    parser.add_argument("--store", default=None, help="folder where uploads are kept when a request asks for it")
    args = parser.parse_args(argv)
    import uvicorn

    predictors = [load_predictor(r, args.runs_dir) for r in args.run]
    app = create_app(predictors, int(args.max_mb * 2 ** 20), args.store, args.tta)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"boneage serve: listening on {args.host}, reachable from other machines", file=sys.stderr)
    print(f"boneage serve: http://{args.host}:{args.port} ({', '.join(args.run)})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
