"""The summary CLI: parameter counts per component via jax.eval_shape, generic over config.model.name."""

import json
import os
import pathlib
import subprocess
import sys
import time

import ml_collections
import pytest

from lamp_jax import summary

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_cli_paligemma_3b_reports_2_9_billion_in_seconds():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-m", "lamp_jax.summary", "--config=configs/paligemma.py:paligemma_3b"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
  elapsed = time.perf_counter() - start
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout)
  assert report["model"] == "paligemma"
  assert 2.90e9 < report["total"] < 2.95e9
  img, llm = report["components"]["img"], report["components"]["llm"]
  assert 0.40e9 < img["total"] < 0.43e9 and 2.50e9 < llm["total"] < 2.52e9
  assert img["total"] + llm["total"] == report["total"]
  assert sum(img["children"].values()) == img["total"]
  assert set(llm["children"]) == {"embedder", "layers", "final_norm"}
  assert llm["children"]["embedder"] == 257_152 * 2048
  assert elapsed < 60, elapsed


def test_summarize_is_generic_and_reports_bad_names():
  tiny = ml_collections.ConfigDict({"name": "paligemma", "vision_variant": "tiny", "llm_variant": "tiny"})
  report = summary.summarize(tiny)
  assert report["total"] == sum(c["total"] for c in report["components"].values()) > 0
  with pytest.raises(ValueError, match="lamp_jax.models.no_such_model"):
    summary.summarize(ml_collections.ConfigDict({"name": "no_such_model"}))
  with pytest.raises(ValueError, match="config.model.name"):
    summary.summarize(ml_collections.ConfigDict({"vision_variant": "tiny"}))
