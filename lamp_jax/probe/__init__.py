"""Probing latent actions: how much a latent z tells about the true robot action a (arrays in, numbers out).

  estimate_mutual_information(z, a, 'ksg' | 'ba' | 'mine')   I(z; a) in bits, mean ± std over seeds, mismatch score
  forward_probe / inverse_probe                      NMSE of z -> a (held-out, OOD) and of a -> z (minimality)
  code_statistics(codes, C)                          usage, perplexity, dead codes, latent entropy
  net_relative_action_targets, transition_pairs      MVP-LAM's action target over a horizon, (t, t+k) pairs
  gaussian_tasks                                     tasks with closed-form MI to calibrate the estimators

No model code: every function takes numpy arrays.
"""

from lamp_jax.probe import gaussian_tasks, mutual_information
from lamp_jax.probe.codes import CodeStatistics, code_statistics
from lamp_jax.probe.ksg import KSGConfig, KSGResult, ksg_mutual_information
from lamp_jax.probe.linear_probe import (PCA, LinearProbeConfig, LinearProbeResult, fit_linear_probe, fit_pca,
                                         forward_probe, inverse_probe, nmse)
from lamp_jax.probe.mutual_information import METHODS, MIEstimate, estimate_mutual_information
from lamp_jax.probe.neural_mi import NeuralMIConfig, NeuralMIResult, barber_agakov, mine
from lamp_jax.probe.targets import (HorizonStatistics, TransitionPairs, action_windows, denormalize, net_action,
                                    net_relative_action_targets, transition_pairs)
