"""A hub model id resolves offline from a local Hugging Face cache (HF_HUB_CACHE or HF_HOME).

The cache is built here in the hub's own layout (`models--org--name/snapshots/<commit>/...` and
`refs/main`) from a tiny saved model; the project's real `build_model`/`build_tokenizer` load it
in a fresh process, since huggingface_hub reads these variables when it is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infodyn.models import char_tokenizer
from tiny_models import tiny

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "org/tiny-roberta"

SCRIPT = r"""
import json, sys, torch
from omegaconf import OmegaConf
from infodyn.models import ModelConfigError, build_model, build_tokenizer

entry = OmegaConf.create({"name": "t", "source": "hub", "name_or_path": sys.argv[1]})
out = {}
try:
    tok = build_tokenizer(entry)
    model = build_model(entry, num_labels=2).eval()
    ids = tok(["hello world", "a b"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out["logits"] = model(**ids).logits.tolist()
    out["class"] = type(model).__name__
except ModelConfigError as err:
    out["error"] = str(err)
print(json.dumps(out))
"""


def _hub_cache(root: Path) -> torch.Tensor:
    """Write `REPO` into `root` in the hub cache layout; return its logits on the probe batch."""
    repo = root / ("models--" + REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    model = tiny("roberta", layers=2)
    model.save_pretrained(snapshot)
    tokenizer = char_tokenizer()
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    ids = tokenizer(["hello world", "a b"], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def _load(model_id: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    src = str(Path(__file__).parents[2] / "src")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, model_id],
        env={**clean, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": src, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_model_id_loads_offline_from_a_local_cache(tmp_path, variable):
    home = tmp_path / "hf_home"
    cache = home / "hub" if variable == "HF_HOME" else tmp_path / "hub_cache"
    want = _hub_cache(cache)
    got = _load(REPO, **{variable: str(home if variable == "HF_HOME" else cache)})
    assert got.get("class") == "RobertaForSequenceClassification", got
    torch.testing.assert_close(torch.tensor(got["logits"]), want, atol=1e-5, rtol=0)


def test_id_missing_from_the_cache_names_the_cache_and_the_fix(tmp_path):
    cache = tmp_path / "hub_cache"
    _hub_cache(cache)
    got = _load("org/not-there", HF_HUB_CACHE=str(cache))
    text = got.get("error", "")
    assert "org/not-there" in text and str(cache) in text and "HF_HUB_OFFLINE=1" in text, got
    assert "model=minilm_l6" in text and "\n" not in text
