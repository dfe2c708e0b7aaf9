"""Probing latent actions: how much a latent z tells about the true robot action a (arrays in, numbers out).

  estimate_mutual_information(z, a, 'ksg' | 'ba' | 'mine')   I(z; a) in bits, mean ± std over seeds, mismatch score
  gaussian_tasks                                     tasks with closed-form MI to calibrate the estimators

No model code: every function takes numpy arrays.
"""

from lamp_jax.probe import gaussian_tasks, mutual_information
from lamp_jax.probe.ksg import KSGConfig, KSGResult, ksg_mutual_information
from lamp_jax.probe.mutual_information import METHODS, MIEstimate, estimate_mutual_information
from lamp_jax.probe.neural_mi import NeuralMIConfig, NeuralMIResult, barber_agakov, mine
