"""Probing latent actions: how much a latent z tells about the true robot action a (arrays in, numbers out).

  estimate_mutual_information(z, a, method)       I(z; a) in bits by 'ksg' | 'ba' | 'mine', mean ± std over
                                                  seeds, and the same on shuffled pairs (mismatch score)
  forward_probe / inverse_probe                   NMSE of z -> a (held-out, OOD) and of a -> z (minimality)
  code_statistics(codes, C)                       usage, perplexity, dead codes, latent entropy
  net_relative_action_targets, transition_pairs   MVP-LAM's action target over a horizon, (t, t+k) pairs
  run_probes + write_plots                        all of it as one JSON-able report, and its PNGs
  gaussian_tasks                                  tasks with closed-form MI to calibrate the estimators
  compare (python -m lamp_jax.probe.compare)      reports of several training seeds per variant -> mean and
                                                  95 % t-interval per variant, Welch intervals of differences

No model code: every function takes numpy arrays. See docs/probing.md.
"""

from lamp_jax.probe import gaussian_tasks, mutual_information
from lamp_jax.probe.codes import CodeStatistics, code_statistics
from lamp_jax.probe.ksg import KSGConfig, KSGResult, ksg_mutual_information
from lamp_jax.probe.linear_probe import (PCA, LinearProbeConfig, LinearProbeResult, fit_linear_probe, fit_pca,
                                         forward_probe, inverse_probe, nmse)
from lamp_jax.probe.mutual_information import METHODS, MIEstimate, estimate_mutual_information
from lamp_jax.probe.neural_mi import NeuralMIConfig, NeuralMIResult, barber_agakov, mine
from lamp_jax.probe.report import (default_config, plot_code_usage, plot_latent_pca, plot_mi_bars, run_probes,
                                   write_plots)
from lamp_jax.probe.targets import (HorizonStatistics, TransitionPairs, action_windows, denormalize, net_action,
                                    net_relative_action_targets, transition_pairs)

__all__ = [
    "CodeStatistics", "HorizonStatistics", "KSGConfig", "KSGResult", "LinearProbeConfig", "LinearProbeResult",
    "METHODS", "MIEstimate", "NeuralMIConfig", "NeuralMIResult", "PCA", "TransitionPairs", "action_windows",
    "barber_agakov", "code_statistics", "default_config", "denormalize", "estimate_mutual_information",
    "fit_linear_probe", "fit_pca", "forward_probe", "gaussian_tasks", "inverse_probe", "ksg_mutual_information",
    "mine", "mutual_information", "net_action", "net_relative_action_targets", "nmse", "plot_code_usage",
    "plot_latent_pca", "plot_mi_bars", "run_probes", "transition_pairs", "write_plots",
]
