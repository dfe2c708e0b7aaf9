"""The summary CLI: parameter counts per component via jax.eval_shape, generic over config.model.name."""

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from lamp_jax import summary
from lamp_jax.models import registry

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_cli_lamp_paper_reports_paligemma_3b_and_the_experts():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-m", "lamp_jax.summary", "--config=configs/lamp.py:paper"],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout)
  assert report["model"] == "lamp"
  components = report["components"]
  assert set(components) == {"vlm", "motion_expert", "guidance", "action_expert"}
  vlm = components["vlm"]
  assert vlm["total"] == 2_923_335_408  # PaliGemma-3B: SigLIP So400m/14 + Gemma 2B
  assert 0.40e9 < vlm["children"]["img"] < 0.43e9 and 2.50e9 < vlm["children"]["llm"] < 2.52e9
  assert sum(c["total"] for c in components.values()) == report["total"]
  assert 3.70e9 < report["total"] < 3.76e9


def test_summarize_is_generic_and_reports_bad_names():
  tiny = registry.get("lamp").model_config("tiny")
  report = summary.summarize(tiny)
  assert report["total"] == sum(c["total"] for c in report["components"].values()) > 0
  with pytest.raises(ValueError, match="no_such_model"):
    summary.summarize(ml_collections.ConfigDict({"name": "no_such_model"}))
  with pytest.raises(ValueError, match="model.name"):
    summary.summarize(ml_collections.ConfigDict({"vision_variant": "tiny"}))
