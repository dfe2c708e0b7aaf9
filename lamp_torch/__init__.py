"""lamp_torch: policies exported from lamp_jax, in PyTorch, for serving without JAX.

  import lamp_torch
  policy = lamp_torch.from_pretrained("/tmp/export", device="cpu")
  policy.reset("stack the red block on the blue block")
  actions = policy({"image_0": rgb, "state": state})        # float32[H, 7]

An export directory is written by ``python -m lamp_jax.export`` (format: ``lamp_jax/export_format.py``). One file
per component mirrors the JAX model files (siglip, gemma, paligemma, motion_expert, guidance, action_expert, dit,
lamp, pi0_expert, pi0, lafp); ``registry.MODEL_KINDS`` maps the model config's ``name`` to its module. This
package imports torch, safetensors, numpy, the standard library and the JAX-free lamp_jax modules
``export_format``, ``tokenizer`` and ``data.normalization`` — never jax, flax or tensorflow.
"""

from lamp_torch.policy import ExportedPolicy, ExportMismatchError, from_pretrained  # noqa: F401
from lamp_torch.registry import MODEL_KINDS  # noqa: F401
