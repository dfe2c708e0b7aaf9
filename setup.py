"""lamp_jax: robot policies that learn from motion, in JAX/Flax (LaMP and latent-action methods)."""

from setuptools import find_packages, setup

# Pinned to versions that install together from PyPI on Python 3.11 (checked on a CPU-only machine).
INSTALL_REQUIRES = [
    "jax[cpu]==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "chex==0.1.92",
    "einops==0.8.2",
    "jaxtyping==0.3.11",
    "ml_collections==1.1.0",
    "absl-py==2.5.1",
    "numpy>=1.26,<3",
    "scipy==1.17.1",  # also a jax dependency; lamp_jax.probe imports it directly (KD-trees, digamma)
    "tensorflow-cpu==2.21.0",
    "tensorflow-datasets==4.9.10",
    "mujoco==4.0.0",
    "sentencepiece==0.2.3",
    "safetensors==0.8.0",
    "msgpack==1.2.4",
    "websockets==17.4",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "imageio==2.38.1",
    "imageio-ffmpeg==0.8.1",
    "tensorboardX==2.6.5",
    "pillow==13.0.0",
    # Train-time crop + colour jitter (lamp_jax/data/augment.py); optical-flow estimators (DIS, Farneback) for
    # datasets without flow (lamp_jax/data/flow_estimation.py).
    "opencv-python-headless==5.1.0.95",
    "importlib_resources==7.1.0",  # tfds.dataset_builders.store_as_tfds_dataset imports it
]

EXTRAS_REQUIRE = {
    # Tests: HF parity needs torch (CPU build) and transformers; the VAE's parity / import tests need diffusers.
    "test": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "torch==2.13.0",
        "transformers==5.23.0",
        "diffusers==0.42.1",
        # tests/test_probe_cli.py executes notebooks/probe_latent_actions.ipynb.
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
    ],
    # Converting checkpoints to / from PyTorch (Hugging Face transformers layout) and serving exported policies
    # with lamp_torch (python -m lamp_jax.serve --export=DIR --backend=torch).
    "torch": ["torch==2.13.0", "transformers==5.23.0"],
    # Ahead-of-time compilation for TPU topologies on a CPU host (python -m lamp_jax.perf.aot).
    "tpu-aot": ["libtpu==0.0.52"],
    "wandb": ["wandb"],
}

setup(
    name="lamp_jax",
    version="0.1.0",
    description="LaMP and latent-action robot policies in pure-functional JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    # lamp_torch: the JAX-free PyTorch port of exported policies (needs the 'torch' extra).
    packages=find_packages(include=["lamp_jax", "lamp_jax.*", "lamp_torch", "lamp_torch.*"]),
    package_data={"lamp_jax": ["sim/assets/*", "sim/assets/**/*"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
