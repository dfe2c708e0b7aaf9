"""Strict weight import / export: big_vision PaliGemma ``.npz`` and Hugging Face transformers safetensors.

Every tensor is mapped; shapes and dtypes are checked; missing and unexpected names raise one
:class:`~lamp_jax.models.weights.strict.StrictLoadError` that lists all of them. There is no non-strict mode.
"""

from lamp_jax.models.weights.strict import StrictLoadError  # noqa: F401
