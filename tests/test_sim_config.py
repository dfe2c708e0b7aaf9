"""configs/sim.py against the built-in suite: every instruction reaches the model whole.

The bug this guards against: with a 16-token budget and silent truncation, byte tokenisation cut every sim
instruction after its 14th byte ("put the yellow", "push the red c"), so the policy never saw the object, the
receptacle or the push direction and could only solve the drawer family."""

import importlib.util
import itertools
import os

import numpy as np
import pytest

from lamp_jax import tokenizer as tokenizer_lib
from lamp_jax.models import lamp_config, registry
from lamp_jax.sim import tasks
from lamp_jax.training import trainer as trainer_lib

lamp = registry.get("lamp")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sim_config(variant: str):
  spec = importlib.util.spec_from_file_location("sim_config", os.path.join(REPO, "configs", "sim.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def _longest_instructions() -> list[str]:
  """Every template filled with the longest words it can take, plus sampled instances of every family."""
  colours = sorted(tasks.COLORS, key=len)[-2:]
  texts = [f"put the {a} cylinder on the {b} plate" for a, b in itertools.product(colours, colours)]
  texts += [f"stack the {a} cube on the {b} cube" for a, b in itertools.product(colours, colours)]
  texts += [f"push the {c} cylinder to the {d}" for c in colours for d in ("left", "right")]
  for family in tasks.suite_families("tabletop4"):
    texts += [tasks.sample_task(family, seed).instruction for seed in range(60)]
  return texts


@pytest.mark.parametrize("variant", ["", "no_motion", "smoke"])
def test_every_sim_instruction_fits_the_token_budget_untruncated(variant):
  config = _sim_config(variant)
  max_len = trainer_lib.text_length(config, config.model)
  tok = trainer_lib.make_tokenizer(config, config.model)
  texts = _longest_instructions()
  assert max(map(len, texts)) == 43  # "put the yellow cylinder on the orange plate": 45 bytes, 10 words
  assert not config.tokenizer.truncate and config.tokenizer.kind == "words"
  tokens, mask = tokenizer_lib.tokenize_prompts(tok, texts, max_len)  # would raise PromptTooLongError
  assert [tok.decode(row[m])[:-1] for row, m in zip(tokens, mask)] == texts  # whole, minus the separator
  # The Motion Expert's condition holds the whole prefix: every camera's patches + the text tokens.
  patches = (int(config.model.image_size) // int(config.model.vlm.vision_overrides.patch_size)) ** 2
  assert int(config.model.motion.cond_len) >= len(config.model.image_keys) * patches + max_len
  assert lamp_config.prefix_length(config.model) == len(config.model.image_keys) * patches + max_len


def test_host_batch_preparer_rejects_or_counts_too_long_instructions_and_counts_unknown_words():
  config = _sim_config("smoke")
  long = b"put the red cube on the blue plate " * 2  # 16 words: over the 12-token budget
  batch = {"task": {"language_instruction": np.array([b"open the drawer", long])}}
  with pytest.raises(tokenizer_lib.PromptTooLongError, match="max_token_len"):
    trainer_lib.HostBatchPreparer(config, config.model)(batch)
  config.tokenizer.truncate = True
  prepare = trainer_lib.HostBatchPreparer(config, config.model)
  out = prepare(batch)
  assert out["task"]["tokens"].shape == (2, 12) and out["task"]["token_mask"][1].all()
  assert prepare.truncated_prompts == 1 and prepare.unknown_words == 0
  prepare({"task": {"language_instruction": np.array([b"open the fridge", b"close the pink drawer"])}})
  assert prepare.truncated_prompts == 1 and prepare.unknown_words == 2


def test_sim_vocabulary_covers_every_instruction_word():
  words = {w for text in _longest_instructions() for w in text.split()}
  assert words == set(tasks.INSTRUCTION_WORDS)


def test_sim_model_variant_byte_budget_fits_every_instruction():
  """lamp.model_config('sim') budgets for the offline default byte tokenizer (used when the words are not)."""
  model = lamp.model_config("sim")
  texts = _longest_instructions()
  tokenizer_lib.tokenize_prompts(tokenizer_lib.ByteTokenizer(), texts, int(model.max_token_len))
  assert int(model.motion.cond_len) >= 2 * 64 + int(model.max_token_len)


def test_model_overrides_reach_the_generated_labels_and_mismatches_are_rejected_by_name():
  """Bug guarded: ``--config.model.motion.num_keypoints=256`` once left data.pipeline and the generation flags at 64
  (the cache key too), so the run read 64-point labels for a 256-point model. Now the data config is derived from
  the model's data requirements when the config is made, and a later model-only override is rejected by name."""
  from lamp_jax import experiment  # pylint: disable=g-import-not-at-top
  from lamp_jax.training import defaults  # pylint: disable=g-import-not-at-top

  c = _sim_config("")
  base_dir = experiment.sim_dataset_dir(c, "/unused")
  assert experiment.generation_flags(c)[:3] == ["--image-size=64", "--num-points=64", "--flow-steps=8"]
  c.model.motion.num_keypoints, c.model.motion.num_steps = 256, 6
  with pytest.raises(ValueError, match=r"data\.pipeline\.scene_flow_num_points, scene_flow_horizon=\(64, 8\) but "
                     r"the model reads scene flow \(K, T\) = \(256, 6\)"):
    defaults.validate(c)
  c.data.pipeline.scene_flow_num_points, c.data.pipeline.scene_flow_horizon = 256, 6
  defaults.validate(c)
  assert experiment.generation_flags(c)[:3] == ["--image-size=64", "--num-points=256", "--flow-steps=6"]
  assert experiment.sim_dataset_dir(c, "/unused") != base_dir  # another cache entry
  c.model.action_horizon = 5
  with pytest.raises(ValueError, match=r"data\.pipeline\.action_horizon"):
    defaults.validate(c)
  c = _sim_config("")
  c.data.pipeline.image_size = (96, 96)
  with pytest.raises(ValueError, match=r"data\.pipeline\.image_size"):
    defaults.validate(c)
  c = _sim_config("")
  c.sim_data.extra_flags = ("--num-points=16",)
  with pytest.raises(ValueError, match=r"sim_data\.extra_flags"):
    experiment.generation_flags(c)


def test_every_variant_reads_the_same_generated_dataset():
  """LaMP, its ablation and π0 compare on the same demonstrations: one cache entry per budget (bug guarded: the
  ablation once asked for scene-flow labels of another size, so it would have generated its own dataset)."""
  from lamp_jax import experiment  # pylint: disable=g-import-not-at-top

  for variants in (("", "no_motion", "pi0"), ("smoke", "smoke_no_motion", "smoke_pi0")):
    dirs = {experiment.sim_dataset_dir(_sim_config(v), "/unused") for v in variants}
    assert len(dirs) == 1, (variants, dirs)


def test_motion_image_variants_share_one_dataset_with_their_vae_and_differ_from_the_ablation_only_by_flow():
  """The motion-image policy is the w/o-motion ablation + the head: the same generation settings plus the exact
  optical-flow images (k = the action horizon), its VAE run reads the very same generated dataset (generated
  once), the head's stages keep the ablation's total step budget, and the VAE is frozen in every stage."""
  from lamp_jax import experiment  # pylint: disable=g-import-not-at-top
  from lamp_jax.training import defaults  # pylint: disable=g-import-not-at-top

  for smoke in ("", "smoke_"):
    ablation, policy, vae = (_sim_config(smoke + v) for v in ("no_motion", "motion_image", "vae"))
    horizon = int(policy.model.action_horizon)
    assert sorted(experiment.generation_flags(policy)) == sorted(experiment.generation_flags(ablation)
                                                                 + [f"--optical-flow-steps={horizon}"])
    assert experiment.sim_dataset_dir(policy, "/unused") == experiment.sim_dataset_dir(vae, "/unused")
    assert experiment.sim_dataset_dir(policy, "/unused") != experiment.sim_dataset_dir(ablation, "/unused")
    assert policy.stage_order == ("warmup", "joint")
    assert sum(int(policy.stages[s].steps) for s in policy.stage_order) == int(ablation.stages.action.steps)
    for stage in policy.stage_order:
      assert any("vae" in pattern for pattern in policy.stages[stage].frozen), stage
    assert policy.prerequisites.vae.config.to_dict() == vae.to_dict()
    assert policy.model.vae.scaling_factor == 0.0  # filled in from the VAE run's report before training
    for stage in policy.stage_order:
      defaults.stage_model_config(policy, stage)  # every stage's overrides name real fields


def test_film_cnn_is_opt_in_and_its_variants_differ_only_in_the_encoder():
  """The default and the existing variants keep the from-scratch PaliGemma without a grounding stage (two seeds of
  the FiLM-CNN measured, no gain shown); the ':film_cnn' variants change the encoder, add stage 0 and freeze the encoder
  in every policy stage, nothing else, and read the same generated demonstrations as the default."""
  from lamp_jax import experiment  # pylint: disable=g-import-not-at-top

  for variant in ("", "no_motion", "smoke", "smoke_no_motion"):
    c = _sim_config(variant)
    assert c.model.vlm.kind == "paligemma" and not c.grounding.enabled, variant
  for base in ("", "no_motion", "smoke", "smoke_no_motion"):
    variant = {"": "film_cnn", "no_motion": "film_cnn_no_motion"}.get(base, base.replace("smoke", "smoke_film_cnn"))
    c, ref = _sim_config(variant), _sim_config(base)
    assert c.model.vlm.kind == "film_cnn" and c.grounding.enabled, variant
    assert c.model.use_motion == ref.model.use_motion
    assert experiment.sim_dataset_dir(c, "/unused") == experiment.sim_dataset_dir(ref, "/unused")
    for stage in c.stage_order:  # the grounded encoder stays as stage 0 left it
      assert tuple(c.stages[stage].frozen) == tuple(ref.stages[stage].frozen) + ("^vlm/",), (variant, stage)
      c.stages[stage].frozen = ref.stages[stage].frozen
    for key in ("model", "grounding"):
      del c[key], ref[key]
    assert c.to_dict() == ref.to_dict(), variant


def test_longer_film_cnn_variants_only_train_longer_at_equal_budgets():
  """':film_cnn_long' / ':film_cnn_no_motion_long' (and '_medium') are their base variants with
  LONG_EXTRA_ACTION_STEPS (MEDIUM_EXTRA_ACTION_STEPS) more 'action' steps, nothing else; LaMP and its ablation keep
  equal total budgets."""
  from configs import sim  # pylint: disable=g-import-not-at-top

  for suffix, extra in (("_long", sim.LONG_EXTRA_ACTION_STEPS), ("_medium", sim.MEDIUM_EXTRA_ACTION_STEPS)):
    totals = []
    for base in ("film_cnn", "film_cnn_no_motion"):
      c, ref = _sim_config(base + suffix), _sim_config(base)
      assert c.stages.action.steps == ref.stages.action.steps + extra > ref.stages.action.steps, (base, suffix)
      totals.append(sum(int(c.stages[s].steps) for s in c.stage_order))
      c.stages.action.steps = ref.stages.action.steps
      assert c.to_dict() == ref.to_dict(), (base, suffix)
    assert totals[0] == totals[1], suffix


def test_preflight_accepts_what_the_vae_prerequisite_fills_in(tmp_path):
  """The motion-image policy's init.vae.path and model.vae.scaling_factor are written by its VAE run, after the
  checks that run before any work: the checks see them filled in (bug guarded: after main's preflight every
  motion-image run stopped at 'init.vae.path must be set'); the config itself is left as it was; a broken
  prerequisite config is named."""
  from lamp_jax import experiment  # pylint: disable=g-import-not-at-top
  from lamp_jax.training import preflight  # pylint: disable=g-import-not-at-top

  policy = _sim_config("smoke_motion_image")
  before = policy.to_dict()
  experiment.check_config(policy, str(tmp_path))
  assert policy.to_dict() == before and policy.init.vae.path is None
  policy.prerequisites.vae.config.stages.vae.frozen = ("^nothing_matches/",)
  with pytest.raises(preflight.ConfigError, match=r"prerequisite 'vae' \(config field prerequisites\.vae\.config\)"):
    experiment.check_config(policy, str(tmp_path))
