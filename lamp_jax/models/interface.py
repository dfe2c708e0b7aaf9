"""The one interface of a model library: how shared code (trainer, eval, serve, export, bench, summary, aot) finds,
builds, initialises and calls every method of lamp_jax.

A method is ONE model file that defines a ``ModelLibrary`` subclass and a module-level ``LIBRARY`` instance, plus
a config (``configs/<name>.py``); ``models/registry.py`` maps the config's ``model.name`` to that file. Shared code
never imports a method's file directly and never asks which method it serves.

The library (stateless; every call takes the model config, an ``ml_collections.ConfigDict`` whose ``name`` field
is the library's ``name``):

  name, variants               registry key; the named sizes ``model_config`` knows ('tiny' for tests, ...)
  model_config(variant)        the model section of a run config
  build(cfg) -> nn.Module      the policy (or model) module, see below
  dummy_batch(cfg, B, seed)    a random numpy batch following ``specs.py`` with every key the model reads
  data_requirements(cfg)       ``specs.DataRequirements``: the batch keys, cameras, image size, future frames,
                               labels and token budget the model reads (the data config is derived from it and
                               checked against it)
  analytic_flops(cfg, B, mode) matmul FLOPs of one call; every library knows 'train_step' (3 x the forward of
                               ``compute_loss``) and, for policies, 'sample_actions'; ``flop_modes`` lists all
  methods                      the optional module methods the model has (``OPTIONAL_METHODS``); shared code
                               checks membership here, never ``hasattr``
  state_collections            (optional) names of the non-parameter variable collections that ``compute_loss``
                               updates while training (e.g. a VQ codebook's usage statistics); () for none
  after_update(cfg, params, model_state, rng)   (optional) runs inside the jitted train step after the
                               optimizer update: returns (params, model_state, metrics); the identity by default
  frame_codes(cfg, params)     (optional) a ``FrameCodes``: the frozen encoder whose per-frame codes the model
                               reads from the batch; the trainer builds / verifies the datasets' code caches with
                               it before the stage's iterator is made (None by default)
  inference_config(cfg)        (optional) the config of what ``sample_actions`` runs, without training-only
                               parts (e.g. an auxiliary head); evaluation, serving and export keep only its
                               parameters (``inference_params``)
  report(cfg, params, batches, out_dir)  (optional) figures of a trained model on held-out batches, written by
                               ``python -m lamp_jax.train`` after the last stage (``report.json``; e.g. a VAE's
                               reconstruction error and latent statistics, with a PNG); None = nothing to report
Derived (not overridden): ``init_variables`` (boxed, logical axis names), ``init_params``, ``init_model_state``,
``abstract_variables``, ``abstract_params``, ``logical_axes`` (``jax.eval_shape``: nothing allocated),
``loss_weights``, ``inference_params``.

Model state (``state_collections``): the trainer keeps those collections in ``TrainState.model_state``
({collection: tree}; None for models without state), applies ``compute_loss`` with them mutable, stores what the
forward pass wrote, calls ``after_update`` (whose parameter changes leave frozen parameters untouched) and
checkpoints them with the rest of the state. A module must also run without them (``apply`` with 'params'
alone: evaluation, export, another model calling it), as a pure function of its parameters.

The module (flax linen; pure ``init`` / ``apply``; every method takes the batch and an explicit PRNG key):

  __call__(batch, rng)                          touches every parameter once (used by ``init``)
  compute_loss(batch, rng, *, train) -> (loss float32[], metrics)
        a weighted sum of NAMED terms: ``cfg.loss.weights`` = {term: weight}; a term of weight 0 is not computed;
        ``metrics['loss/<term>']`` holds every term (0 when off) and ``metrics['loss']`` the total
  sample_actions(batch, rng, *, noise=None) -> float32[B, H, A]      normalised action chunk (policies)
        ``noise``: optional dict of the initial noises the sampler would draw (e.g. {'action': float32[B, H, A]})
        so that two implementations can be compared on identical draws
  encode_latent(batch, rng) -> dict              latent action models: pre-quantisation latent and codes
  reconstruct_motion(batch, rng, ...)            models with a motion head: the decoded motion for plots
  reconstruct_motion_image(batch, rng, ...)      models with a motion-image head: the decoded flow image

Stages (``training/defaults.py``) change term weights through ``model_overrides.loss.weights.<term>`` and freeze
parameters by path regexes; both are checked against the model before any work starts.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lamp_jax import specs

@dataclasses.dataclass(frozen=True)
class BenchVariant:
  """One timed inference call of ``python -m lamp_jax.bench --what=inference``: ``sample_actions`` of the model
  built from ``cfg`` with ``sample_kwargs``, whose FLOPs are ``analytic_flops(cfg, B, flop_mode)``."""

  cfg: ml_collections.ConfigDict
  sample_kwargs: tuple[tuple[str, Any], ...] = ()
  flop_mode: str = "sample_actions"


@dataclasses.dataclass(frozen=True)
class FrameCodes:
  """A frozen encoder whose per-frame codes a model reads from the batch (``frame_codes`` int32[B, L_z],
  ``frame_codes_valid`` bool[B]) instead of running it in the train step: before the stage's data iterator is made,
  the trainer builds (or reads and verifies) each dataset's code cache with it (lamp_jax/data/code_cache_build.py)
  and has the pipeline attach the codes (``data.frame_codes``)."""

  requirements: specs.DataRequirements  # the frames the encoder reads: cameras, image size, future frames
  source: dict  # JSON-able named fields that change the codes (a hash of the parameters, config fields)
  encode: Callable[[dict], tuple[np.ndarray, np.ndarray]]  # numpy batch -> (codes int32[B, L_z], valid bool[B])
  batch_size: int = 64  # frames per ``encode`` call while the cache is built


# Optional module methods a library may declare in ``methods`` (compute_loss is mandatory).
OPTIONAL_METHODS = ("sample_actions", "encode_latent", "reconstruct_motion", "reconstruct_motion_image")


class ModelLibrary(abc.ABC):
  """Base class of every model library (see the module docstring). Subclasses set ``name``, ``variants``,
  ``methods`` (and ``flop_modes``) and implement the abstract methods."""

  name: str = ""
  variants: tuple[str, ...] = ()
  methods: frozenset[str] = frozenset()
  flop_modes: tuple[str, ...] = ("train_step",)
  state_collections: tuple[str, ...] = ()

  def __init__(self):
    if not self.name or not self.variants:
      raise TypeError(f"{type(self).__name__} must set the class attributes 'name' and 'variants'")
    unknown = set(self.methods) - set(OPTIONAL_METHODS)
    if unknown:
      raise TypeError(f"{type(self).__name__}.methods has unknown entries {sorted(unknown)}; known: {OPTIONAL_METHODS}")

  # -------------------------------------------------------------------------------------- to implement
  @abc.abstractmethod
  def model_config(self, variant: str) -> ml_collections.ConfigDict:
    """The model config of a named variant (its ``name`` field is ``self.name``)."""

  @abc.abstractmethod
  def build(self, cfg: ml_collections.ConfigDict) -> nn.Module:
    """The linen module for ``cfg``."""

  @abc.abstractmethod
  def dummy_batch(self, cfg: ml_collections.ConfigDict, batch_size: int = 2, seed: int = 0) -> dict:
    """A random numpy batch (``specs.py`` keys, tokens included) with everything the model reads."""

  @abc.abstractmethod
  def data_requirements(self, cfg: ml_collections.ConfigDict) -> specs.DataRequirements:
    """What the model reads from a batch."""

  @abc.abstractmethod
  def analytic_flops(self, cfg: ml_collections.ConfigDict, batch_size: int, mode: str) -> float:
    """Matmul FLOPs (2 per multiply-add) of one call in ``mode`` (one of ``flop_modes``)."""

  # -------------------------------------------------------------------------------------- optional
  # Ratios of bench variants the benchmark reports: {ratio name: (numerator variant, denominator variant)}.
  bench_ratios: dict[str, tuple[str, str]] = {}

  def bench_variants(self, cfg: ml_collections.ConfigDict) -> dict[str, BenchVariant]:
    """The inference calls ``lamp_jax.bench`` times side by side (round robin, one run): by default
    ``sample_actions`` alone; a library adds its ablations (e.g. without its motion prior)."""
    return {"sample_actions": BenchVariant(cfg)}

  def after_update(self, cfg: ml_collections.ConfigDict, params: Any, model_state: Any,
                   rng: jax.Array) -> tuple[Any, Any, dict]:
    """Inside the jitted train step, after the optimizer update: (params, model_state, scalar metrics). Pure and
    traceable; e.g. a VQ model restarts dead codes here. Default: unchanged, no metrics."""
    del cfg, rng
    return params, model_state, {}

  def frame_codes(self, cfg: ml_collections.ConfigDict, params: Any) -> FrameCodes | None:
    """The frozen encoder whose cached per-frame codes a stage of ``cfg`` reads from the batch (``FrameCodes``),
    given the stage's initialised / loaded ``params``; the trainer calls it before each stage's data iterator is
    made. None (default): the model reads no cached codes."""
    del cfg, params
    return None

  def inference_config(self, cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config of the model ``sample_actions`` runs: ``cfg`` without training-only parts (an auxiliary head
    that inference never calls). Its parameter tree is a subtree of ``cfg``'s; export keeps only it."""
    return cfg

  def report(self, cfg: ml_collections.ConfigDict, params: Any, batches: list[dict], out_dir: str) -> dict | None:
    """Figures of trained ``params`` on held-out ``batches`` (numpy, the data pipeline's layout), files written
    into ``out_dir``; ``python -m lamp_jax.train`` writes the result to ``<workdir>/report.json`` after the last
    stage. None (default): the model has nothing to report (policies are evaluated closed-loop instead)."""
    del cfg, params, batches, out_dir
    return None

  # Held-out batches ``report`` reads (0: no report).
  report_batches: int = 0

  def reference_config(self, cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
    """``cfg`` with the model's exact rewrites (same math, faster) switched off: the plain computation that
    ``bench --with_reference`` times beside it. None when the model has none."""
    del cfg
    return None

  # -------------------------------------------------------------------------------------- derived
  def check_config(self, cfg: ml_collections.ConfigDict) -> None:
    """Raises naming the field when ``cfg`` is not a config of this library."""
    name = cfg.get("name", None)
    if name != self.name:
      raise ValueError(f"config field model.name={name!r} does not name the library {self.name!r}")

  def loss_weights(self, cfg: ml_collections.ConfigDict) -> dict[str, float]:
    """{term: weight} of ``cfg.loss.weights``."""
    return {str(k): float(v) for k, v in cfg.loss.weights.items()}

  def init_variables(self, cfg: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict:
    """Boxed variables (parameters carry logical axis names; ``nn.unbox`` for plain arrays), jit-compiled."""
    model = self.build(cfg)

    def init(rng, batch):
      rng_init, rng_call = jax.random.split(rng)
      return model.init(rng_init, batch, rng_call)

    return jax.jit(init)(rng, batch)

  def init_params(self, cfg: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict:
    """Random parameters (plain arrays)."""
    return nn.unbox(self.init_variables(cfg, rng, batch))["params"]

  def init_model_state(self, cfg: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict | None:
    """{collection: plain arrays} of ``state_collections`` as initialised with ``rng`` (the same draw as
    ``init_params`` with that key); None when the model has no state."""
    if not self.state_collections:
      return None
    variables = nn.unbox(self.init_variables(cfg, rng, batch))
    return {name: variables[name] for name in self.state_collections}

  def abstract_variables(self, cfg: ml_collections.ConfigDict) -> dict:
    """Boxed variables of jax.ShapeDtypeStruct (no allocation)."""
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), self.dummy_batch(cfg, 1))
    return jax.eval_shape(lambda rng, b: self.init_variables(cfg, rng, b), jax.random.key(0), batch)

  def abstract_params(self, cfg: ml_collections.ConfigDict) -> dict:
    """Parameter tree of jax.ShapeDtypeStruct via jax.eval_shape (no allocation)."""
    return nn.unbox(self.abstract_variables(cfg))["params"]

  def inference_params(self, cfg: ml_collections.ConfigDict, params: dict, *,
                       abstract: dict | None = None) -> tuple[dict, ml_collections.ConfigDict]:
    """(``params`` restricted to what ``sample_actions`` reads, ``inference_config(cfg)``): the top-level
    subtrees of training-only parts (e.g. the motion-image head and its VAE, LARA's latent action model) are
    dropped, so that a jitted ``sample_actions`` neither takes them as arguments nor keeps them alive. Every
    deployment path uses it (closed-loop evaluation, the policy server, export). ``abstract``: the inference
    config's ``abstract_params`` when the caller has them (else traced here, when the config changes)."""
    inference_cfg = self.inference_config(cfg)
    if inference_cfg.to_dict() == cfg.to_dict():
      return params, cfg
    keep = set(self.abstract_params(inference_cfg) if abstract is None else abstract)
    missing = sorted(keep - set(params))
    if missing:
      raise ValueError(f"model {self.name!r}: the parameters lack the top-level entries {missing} that "
                       f"sample_actions reads (have {sorted(params)})")
    return {k: v for k, v in params.items() if k in keep}, inference_cfg

  def logical_axes(self, cfg: ml_collections.ConfigDict) -> dict:
    """Parameter tree of PartitionSpec holding each parameter's logical axis names."""
    return nn.get_partition_spec(self.abstract_variables(cfg))["params"]

  def __repr__(self) -> str:
    return f"<model library {self.name!r}>"

