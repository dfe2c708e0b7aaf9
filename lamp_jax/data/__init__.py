"""RLDS / Open X-Embodiment input pipeline in tf.data (our own small dlimp: plain functions over tf.data).

Modules: config (the data ConfigDict) · rlds (open, read, validate episodes) · datasets/ (standardisation
registry) · normalization (stats + cache) · traj_transforms · frame_transforms · pipeline (mixtures, batches,
global arrays) · inference (one raw observation -> batch) · errors · synthetic (tiny datasets) · inspect (CLI).
"""
