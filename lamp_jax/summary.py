"""Parameter counts of a model config, computed with jax.eval_shape (nothing is allocated).

  python -m lamp_jax.summary --config=configs/paligemma.py:paligemma_3b

Prints JSON: the total and, per top-level component (e.g. 'img', 'llm'), its total and its second-level
children. Generic over models: ``config.model.name`` names a module ``lamp_jax.models.<name>`` that provides
``abstract_params(model_config) -> pytree of jax.ShapeDtypeStruct``.
"""

from __future__ import annotations

import importlib
import json
import time
from typing import Any

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<name>.py[:variant]).",
                                          lock_config=True)


def count(tree: Any) -> int:
  """Number of scalars in a pytree of arrays / ShapeDtypeStructs."""
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)))


def abstract_params(model_config: ml_collections.ConfigDict) -> Any:
  """Dispatches to ``lamp_jax.models.<model_config.name>.abstract_params``."""
  name = model_config.get("name", None)
  if not name:
    raise ValueError("config.model.name is not set (it names the module lamp_jax.models.<name>)")
  try:
    module = importlib.import_module(f"lamp_jax.models.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"lamp_jax.models.{name}":
      raise
    raise ValueError(f"config.model.name={name!r}: no module lamp_jax.models.{name}") from e
  if not hasattr(module, "abstract_params"):
    raise ValueError(f"lamp_jax.models.{name} has no abstract_params(model_config)")
  return module.abstract_params(model_config)


def summarize(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'model', 'total', 'components': {name: {'total', 'children': {child: count}}}, 'seconds'}."""
  start = time.perf_counter()
  params = abstract_params(model_config)
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
    raise app.UsageError("--config is required, e.g. --config=configs/paligemma.py:tiny")
  summary = {"config": config_flags.get_config_filename(flags.FLAGS["config"])}
  summary.update(summarize(_CONFIG.value.model))
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
