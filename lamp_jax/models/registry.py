"""Model libraries by name: ``config.model.name`` -> the ``ModelLibrary`` that builds it (``interface.py``).

The built-in methods are listed in ``LIBRARIES`` (name -> module); adding a method adds one line here. A name
with a dot is taken as the import path of a module outside the package (a user's method, or the tests' toy
model) that defines ``LIBRARY`` the same way. The module is imported only when its name is asked for.
"""

from __future__ import annotations

import functools
import importlib

import ml_collections

from lamp_jax.models import interface

LIBRARIES = {
    "lamp": "lamp_jax.models.lamp",
    "pi0": "lamp_jax.models.pi0",
    "lam": "lamp_jax.models.lam",
    "vae": "lamp_jax.models.vae",
    "lafp": "lamp_jax.models.lafp",
}


@functools.cache
def get(name: str) -> interface.ModelLibrary:
  """The library registered as ``name`` (or the ``LIBRARY`` of the module at import path ``name``)."""
  if name in LIBRARIES:
    module_path = LIBRARIES[name]
  elif "." in name:
    module_path = name
  else:
    raise ValueError(f"config field model.name={name!r} is not a known model (known: {sorted(LIBRARIES)}; or give "
                     "the import path of a module that defines LIBRARY)")
  try:
    module = importlib.import_module(module_path)
  except ModuleNotFoundError as e:
    if e.name and module_path.startswith(e.name):
      raise ValueError(f"config field model.name={name!r}: no module {module_path}") from e
    raise
  library = vars(module).get("LIBRARY")
  if not isinstance(library, interface.ModelLibrary):
    raise ValueError(f"config field model.name={name!r}: module {module_path} defines no LIBRARY "
                     "(an instance of lamp_jax.models.interface.ModelLibrary)")
  if "." not in name and library.name != name:
    raise ValueError(f"module {module_path} registers its library as {library.name!r}, not {name!r}")
  return library


def for_config(model_cfg: ml_collections.ConfigDict) -> interface.ModelLibrary:
  """The library of a model config (its ``name`` field)."""
  name = model_cfg.get("name", None)
  if not name:
    raise ValueError("config field model.name is not set (it names the model library, e.g. 'lamp')")
  return get(str(name))
