r"""The built-in benchmark's comparison for latent-action pretraining on the grounded FiLM-CNN policy.

  python -m lamp_jax.train --config=configs/lam.py:sim_single_h8 --workdir=/tmp/lam_h8   # the LAM whose codes it learns
  python -m lamp_jax.ablate --suite_config=configs/sim_film_cnn_latent.py --methods=latent_pretraining,small_labelled \
      --seeds=3 --workdir=/tmp/ablate_film_cnn_latent --config.init.lam.path=/tmp/lam_h8

Latent-action pretraining trains the policy's encoder on action-free episodes (the VLM and a code head predict the
latent action model's codes of (o_t, o_{t+H})), then learns actions on a small labelled set. Its gain can only come
through the encoder, which configs/sim_film_cnn.py freezes whole; here both arms freeze only the keypoint trunk that
stage 0 trains (the ':film_cnn_trunk' freezing), so the 'latent' stage pretrains the encoder's last conv stage,
token projections and embeddings. Both arms: the w/o-motion FiLM-CNN policy, the same stage 0, demonstrations,
labelled episodes (the first ``LABELLED_EPISODES`` of configs/sim.py), 'action' stage (steps, optimizer) and
evaluation; 'latent_pretraining' adds its 'latent' stage (``LATENT_STEPS``) on the other training episodes with
their actions hidden, 'small_labelled' does not (the method's baseline: the labelled budget alone).
"""

from configs.sim import VARIANTS, get_config  # the variants and their configs are configs/sim.py's

__all__ = ["ABLATION_METHODS", "VARIANTS", "get_config"]

ABLATION_METHODS = {
    "latent_pretraining": ("film_cnn_trunk_latent_pretraining", "smoke_film_cnn_trunk_latent_pretraining"),
    "small_labelled": ("film_cnn_trunk_small_labelled", "smoke_film_cnn_trunk_small_labelled"),
}
