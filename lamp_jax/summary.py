"""Parameter counts of a model config, computed with jax.eval_shape (nothing is allocated).

  python -m lamp_jax.summary --config=configs/lamp.py:paper

Prints JSON: the total and, per top-level component (e.g. 'vlm', 'motion_expert'), its total and its second-level
children (the VLM's 'img' and 'llm' towers). Any model library works (``config.model.name``,
``lamp_jax/models/registry.py``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from lamp_jax.models import registry

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<name>.py[:variant]).",
                                          lock_config=True)


def count(tree: Any) -> int:
  """Number of scalars in a pytree of arrays / ShapeDtypeStructs."""
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)))


def summarize(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'model', 'total', 'components': {name: {'total', 'children': {child: count}}}, 'seconds'}."""
  start = time.perf_counter()
  params = registry.for_config(model_config).abstract_params(model_config)
  components = {}
  for name, sub in params.items():
    children = {child: count(value) for child, value in sub.items()} if isinstance(sub, dict) else {}
    components[name] = {"total": count(sub), "children": children}
  return {
      "model": model_config.name,
      "total": count(params),
      "total_billions": round(count(params) / 1e9, 4),
      "components": components,
      "seconds": round(time.perf_counter() - start, 3),
  }


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/lamp.py:paper")
  summary = {"config": config_flags.get_config_filename(flags.FLAGS["config"])}
  summary.update(summarize(_CONFIG.value.model))
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
