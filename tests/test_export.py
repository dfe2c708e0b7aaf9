"""PyTorch export (``lamp_jax.export``) of LaMP, π0 and LAFP: strict name / shape mapping both ways, bit-exact
round trips (float32, bfloat16), file sizes from shapes alone, checkpoint export (EMA choice, camera mapping,
statistics), clear errors on bad inputs, the VLM tensors loading into transformers' PaliGemma and π0's expert Gemma
into transformers' GemmaModel, the exporter's kinds equal to lamp_torch's, and training-only parts (LaMP's
motion-image head, LAFP's frozen latent action model) left out."""

from __future__ import annotations

import copy
import glob
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import torch

import lamp_torch
from lamp_jax import export
from lamp_jax import export_format
from lamp_jax.models import lafp
from lamp_jax.models import lafp_config
from lamp_jax.models import registry
from lamp_jax.models.weights import hf_paligemma
from lamp_jax.models.weights import strict
from lamp_jax.training import checkpoints as ckpt_lib
from tests import export_helpers
from tests.export_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from tests import toy_model
from tests import toy_train_config

lamp = registry.get("lamp")
pi0 = registry.get("pi0")

TINY = lamp.model_config("tiny")
LAFP = lafp.without_lam(lafp_config.model_config("tiny"))  # latent 3 tokens x 11 dims, decoder width 36
INPUTS = {"cameras": list(TINY.image_keys), "camera_keys": {c: c for c in TINY.image_keys},
          "image_size": [TINY.image_size] * 2, "resize": False, "state_key": "state",
          "proprio_dim": TINY.proprio_dim, "state_dim": None}
TOKENIZER = {"kind": "bytes", "words": "", "path": "", "max_len": TINY.max_token_len, "truncate": True}


def _export(params, model_cfg, out_dir):
  inputs = dict(INPUTS, image_size=[model_cfg.image_size] * 2, proprio_dim=model_cfg.proprio_dim)
  return export.export_params(params, model_cfg, str(out_dir), inputs=inputs, normalization=None,
                              tokenizer=dict(TOKENIZER, max_len=model_cfg.max_token_len), source={"test": True})


def _variants():
  """Model options that change the parameter tree: every one must map both ways and build in PyTorch."""
  out = {"tiny": TINY}
  v = copy.deepcopy(TINY)
  v.use_motion = False
  out["no_motion"] = v
  v = copy.deepcopy(TINY)  # unscanned stacks (blocks_i), 3-D RoPE, pooled condition
  v.motion.scan_layers, v.action.scan_layers, v.motion.use_rope = False, False, True
  v.motion.cond_pool, v.motion.cond_len, v.motion.prune_last_condition = 3, 10, False
  out["unscanned_rope_pool"] = v
  v = copy.deepcopy(TINY)  # the VLM options transformers has no tensors for
  v.vlm.vision_overrides = ml_collections.ConfigDict(dict(stem="conv", stem_width=6, posemb="learn"))
  v.vlm.camera_embeddings = 2
  out["conv_stem_cameras"] = v
  v = copy.deepcopy(TINY)
  v.vlm.vision_overrides = ml_collections.ConfigDict(dict(posemb="sincos2d"))
  out["sincos_posemb"] = v
  out["pi0"] = pi0.model_config("tiny")
  v = pi0.model_config("tiny")  # the VLM options transformers has no tensors for, under π0
  v.vlm.vision_overrides = ml_collections.ConfigDict(dict(stem="conv", stem_width=6, posemb="learn"))
  v.vlm.camera_embeddings = 2
  out["pi0_conv_stem_cameras"] = v
  out["lafp"] = LAFP  # the policy an export keeps: the inference config (no LAM)
  out["lafp_bc"] = lafp.without_lam(lafp_config.model_config("tiny", "bc"))
  return out


@pytest.mark.parametrize("variant", sorted(_variants()))
def test_names_and_shapes_are_the_torch_state_dict_and_round_trip_is_bit_exact(variant, tmp_path):
  model_cfg = _variants()[variant]
  params = export_helpers.random_params(model_cfg, seed=1)
  _export(params, model_cfg, tmp_path / "a")
  policy = lamp_torch.from_pretrained(str(tmp_path / "a"))  # strict: raises on any name / shape difference
  tensors = export.read_safetensors(str(tmp_path / "a" / export_format.MODEL_FILE))
  state = policy.model.state_dict()
  assert sorted(tensors) == sorted(state)
  for name, value in tensors.items():
    assert tuple(value.shape) == tuple(state[name].shape), name
    np.testing.assert_array_equal(np.asarray(value), state[name].numpy(), err_msg=name)
  back, back_cfg, config = export.load_export(str(tmp_path / "a"))
  assert back_cfg.to_dict() == export.model_config_from_json(config["model"]).to_dict()
  flat_in, flat_back = strict.flatten(params), strict.flatten(back)
  assert sorted(flat_in) == sorted(flat_back)
  for name in flat_in:
    assert flat_back[name].dtype == flat_in[name].dtype
    np.testing.assert_array_equal(flat_back[name], flat_in[name], err_msg=name)
  _export(back, back_cfg, tmp_path / "b")
  with open(tmp_path / "a" / export_format.MODEL_FILE, "rb") as f1, \
       open(tmp_path / "b" / export_format.MODEL_FILE, "rb") as f2:
    assert f1.read() == f2.read()


def test_bfloat16_parameters_are_kept_bfloat16_and_round_trip_exactly(tmp_path):
  import ml_dtypes

  params = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), export_helpers.random_params(TINY, seed=2))
  params["guidance"]["gate_logit"] = np.asarray(0.25, np.float32)  # mixed dtypes are kept per tensor
  info = _export(params, TINY, tmp_path / "a")
  assert info["dtypes"] == ["bfloat16", "float32"]
  state = lamp_torch.from_pretrained(str(tmp_path / "a")).model.state_dict()
  assert state["vlm.model.language_model.embed_tokens.weight"].dtype == torch.bfloat16
  assert state["guidance.gate_logit"].dtype == torch.float32 and state["guidance.gate_logit"].shape == ()
  back, _, _ = export.load_export(str(tmp_path / "a"))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  _export(back, TINY, tmp_path / "b")
  assert (open(tmp_path / "a" / export_format.MODEL_FILE, "rb").read()
          == open(tmp_path / "b" / export_format.MODEL_FILE, "rb").read())
  # The size from shapes and dtypes alone (safetensors orders float32 before bfloat16) is the file's.
  tensors = export.read_safetensors(str(tmp_path / "a" / export_format.MODEL_FILE))
  specs = [(name, np.dtype(t.dtype).name, t.shape) for name, t in tensors.items()]
  assert export_format.safetensors_size(specs, export.METADATA) == info["bytes"]


PI0 = pi0.model_config("tiny")


def test_pi0_bfloat16_parameters_are_kept_and_round_trip_exactly(tmp_path):
  import ml_dtypes

  params = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), export_helpers.random_params(PI0, seed=2))
  bias = params["action_expert"]["action_out_proj"]["dense"]["bias"]
  params["action_expert"]["action_out_proj"]["dense"]["bias"] = bias.astype(np.float32)  # kept per tensor
  info = _export(params, PI0, tmp_path / "a")
  assert info["dtypes"] == ["bfloat16", "float32"]
  state = lamp_torch.from_pretrained(str(tmp_path / "a")).model.state_dict()
  assert state["action_expert.llm.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
  assert state["action_expert.action_out_proj.bias"].dtype == torch.float32
  back, _, _ = export.load_export(str(tmp_path / "a"))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  _export(back, PI0, tmp_path / "b")
  assert (open(tmp_path / "a" / export_format.MODEL_FILE, "rb").read()
          == open(tmp_path / "b" / export_format.MODEL_FILE, "rb").read())


def test_pi0_expert_gemma_has_transformers_names():
  """The expert's Gemma (action_expert/llm) is named as transformers' GemmaModel, without embed_tokens: query
  kernel [N, D, H] of layer i -> q_proj.weight [N * H, D]; the K / V pair [2, K, D, H] -> k_proj / v_proj; the
  suffix projections follow the kernel -> weight rule ([2D -> D] is weight [D, 2D])."""
  entries = {e.name: e for e in export.layout(PI0)[0]}
  q = entries["action_expert.llm.layers.2.self_attn.q_proj.weight"]
  assert q.ours == "action_expert/llm/layers/attn/q_einsum/w" and q.index == (2,) and q.shape == (3 * 16, 38)
  kernel = np.arange(3 * 38 * 16, dtype=np.float32).reshape(3, 38, 16)
  assert q.to_torch(kernel)[1 * 16 + 5, 7] == kernel[1, 7, 5]  # row = head * H + head_dim, column = input
  v = entries["action_expert.llm.layers.1.self_attn.v_proj.weight"]
  assert v.ours == "action_expert/llm/layers/attn/kv_einsum/w" and v.index == (1, 1) and v.shape == (16, 38)
  up = entries["action_expert.llm.layers.0.mlp.up_proj.weight"]
  assert up.index == (0, 1) and up.shape == (70, 38)
  assert entries["action_expert.llm.norm.weight"].ours == "action_expert/llm/final_norm/scale"
  assert entries["action_expert.action_time_mlp_in.weight"].shape == (38, 2 * 38)
  assert entries["action_expert.state_proj.weight"].shape == (38, PI0.proprio_dim)
  assert not any(name.startswith("action_expert.llm.embed_tokens") for name in entries)
  assert sum(name.startswith("action_expert.llm.layers.") for name in entries) == 3 * 9  # 3 layers, 9 tensors


def test_a_gemma_tree_with_foreign_parameters_is_an_error():
  shapes = {"expert/llm/" + n: (3, 2, 8, 4) for n in export.torch_export.GEMMA_PARAMS}
  shapes["expert/llm/layers/attn/kv_einsum/w"] = (3, 2, 1, 8, 4)
  shapes["expert/llm/adapter"] = (8,)
  with pytest.raises(ValueError, match=r"cannot export expert/llm: .*\['expert/llm/adapter'\] are not a Gemma's"):
    export.torch_export.expert_entries(shapes, {})


def test_pi0_strict_both_ways_names_every_problem(tmp_path):
  params = export_helpers.random_params(PI0, seed=3)
  flat = strict.flatten(params)
  entries, abstract = export.layout(PI0)
  broken = dict(flat)
  del broken["action_expert/state_proj/dense/bias"]
  broken["action_expert/llm/extra"] = np.zeros(3, np.float32)
  with pytest.raises(strict.StrictLoadError) as e:
    export.torch_export.to_torch_tensors(strict.unflatten(broken), entries, abstract)
  assert e.value.missing == ["action_expert/state_proj/dense/bias"]
  assert e.value.unexpected == ["action_expert/llm/extra"]
  reshaped = dict(flat, **{"action_expert/llm/layers/attn/q_einsum/w": np.zeros((3, 3, 38, 14), np.float32)})
  with pytest.raises(strict.StrictLoadError, match=r"action_expert/llm/layers/attn/q_einsum/w: shape \(3, 3, 38, 14\) "
                     r"!= expected \(3, 3, 38, 16\)"):
    export.torch_export.to_torch_tensors(strict.unflatten(reshaped), entries, abstract)

  _export(params, PI0, tmp_path)
  path = str(tmp_path / export_format.MODEL_FILE)
  tensors = {k: np.array(v) for k, v in export.read_safetensors(path).items()}
  del tensors["action_expert.llm.layers.1.self_attn.v_proj.weight"]
  tensors["action_expert.llm.embed_tokens.weight"] = np.zeros((263, 38), np.float32)
  tensors["action_expert.action_in_proj.weight"] = np.zeros((38, 8), np.float32)
  export.write_safetensors(tensors, path)
  with pytest.raises(strict.StrictLoadError) as e:  # JAX import
    export.load_export(str(tmp_path))
  assert e.value.missing == ["action_expert.llm.layers.1.self_attn.v_proj.weight"]
  assert e.value.unexpected == ["action_expert.llm.embed_tokens.weight"]
  with pytest.raises(lamp_torch.ExportMismatchError) as e:  # PyTorch import
    lamp_torch.from_pretrained(str(tmp_path))
  assert e.value.missing == ["action_expert.llm.layers.1.self_attn.v_proj.weight"]
  assert e.value.unexpected == ["action_expert.llm.embed_tokens.weight"]
  assert e.value.mismatched == ["action_expert.action_in_proj.weight: shape (38, 8) != (38, 7) from config.json"]


def test_pi0_config_json_errors_name_the_field(tmp_path):
  _export(export_helpers.random_params(PI0, seed=4), PI0, tmp_path)
  config_path = tmp_path / export_format.CONFIG_FILE
  config = json.loads(config_path.read_text())
  assert config["expert_llm"]["width"] == 38 and config["expert_llm"]["depth"] == config["vlm"]["llm"]["depth"]
  edited = copy.deepcopy(config)
  edited["expert_llm"]["num_kv_heads"] = 3
  config_path.write_text(json.dumps(edited))
  with pytest.raises(ValueError, match=r"field expert_llm\) must match the VLM's LLM .*num_kv_heads=3 vs 1"):
    lamp_torch.from_pretrained(str(tmp_path))
  del edited["expert_llm"]
  config_path.write_text(json.dumps(edited))
  with pytest.raises(export_format.ExportFormatError, match="has no field 'expert_llm'"):
    lamp_torch.from_pretrained(str(tmp_path))
  config_path.write_text(json.dumps(dict(config, kind="lamp")))
  with pytest.raises(ValueError, match="config.json field kind='lamp' but model.name='pi0'"):
    lamp_torch.from_pretrained(str(tmp_path))


def test_the_exporter_and_lamp_torch_know_the_same_kinds():
  assert set(export.KINDS) == set(lamp_torch.MODEL_KINDS) == {"lamp", "pi0", "lafp"}
  for kind in export.KINDS:
    assert registry.get(kind).name == kind


def test_kernel_to_weight_rule_on_known_layers():
  """A query kernel [D, N, H] is Linear weight [N*H, D]; an attention 'out' kernel [N, H, D] is [D, N*H]; a
  stacked layer's slice i is blocks.i; an adaLN projection [C, 6, W] is [6*W, C]."""
  entries = {e.name: e for e in export.layout(TINY)[0]}
  q = entries["motion_expert.blocks.1.attn.query.weight"]
  assert q.ours == "motion_expert/blocks/attn/query/dense/kernel" and q.index == (1,) and q.shape == (40, 40)
  kernel = np.arange(40 * 4 * 10, dtype=np.float32).reshape(40, 4, 10)
  weight = q.to_torch(kernel)
  assert weight[2 * 10 + 3, 7] == kernel[7, 2, 3]  # row = head * H + head_dim, column = input
  out = entries["guidance.attn.out.weight"]
  kernel = np.arange(3 * 16 * 48, dtype=np.float32).reshape(3, 16, 48)
  assert out.shape == (48, 48) and out.to_torch(kernel)[5, 1 * 16 + 2] == kernel[1, 2, 5]
  mod = entries["action_expert.blocks.0.cross.mod.proj.weight"]
  assert mod.shape == (6 * 36, 36)
  assert entries["motion_expert.cond_pad"].shape == (29, 40)
  assert entries["vlm.model.language_model.layers.2.self_attn.q_proj.weight"].ours == \
      "vlm/llm/layers/attn/q_einsum/w"


def test_strict_both_ways_name_every_problem(tmp_path):
  params = export_helpers.random_params(TINY, seed=3)
  flat = strict.flatten(params)
  entries, abstract = export.layout(TINY)
  broken = dict(flat)
  del broken["guidance/gate_logit"], broken["action_expert/state_in/dense/bias"]
  broken["guidance/extra"] = np.zeros(3, np.float32)
  with pytest.raises(strict.StrictLoadError) as e:
    export.torch_export.to_torch_tensors(strict.unflatten(broken), entries, abstract)
  assert e.value.missing == ["action_expert/state_in/dense/bias", "guidance/gate_logit"]
  assert e.value.unexpected == ["guidance/extra"]
  reshaped = dict(flat, **{"motion_expert/cond_pad": np.zeros((28, 40), np.float32)})
  with pytest.raises(strict.StrictLoadError, match=r"motion_expert/cond_pad: shape \(28, 40\)"):
    export.torch_export.to_torch_tensors(strict.unflatten(reshaped), entries, abstract)

  _export(params, TINY, tmp_path)
  path = str(tmp_path / export_format.MODEL_FILE)
  tensors = {k: np.array(v) for k, v in export.read_safetensors(path).items()}
  del tensors["vlm.model.language_model.norm.weight"], tensors["action_expert.blocks.0.self.mlp.fc2.bias"]
  tensors["vlm.lm_head.weight"] = np.zeros((2, 2), np.float32)
  tensors["guidance.motion_proj.weight"] = np.zeros((48, 41), np.float32)
  export.write_safetensors(tensors, path)
  with pytest.raises(strict.StrictLoadError) as e:  # JAX import
    export.load_export(str(tmp_path))
  assert e.value.missing == ["action_expert.blocks.0.self.mlp.fc2.bias", "vlm.model.language_model.norm.weight"]
  assert e.value.unexpected == ["vlm.lm_head.weight"]
  del tensors["vlm.lm_head.weight"]
  tensors["action_expert.blocks.0.self.mlp.fc2.bias"] = np.zeros(36, np.float32)
  tensors["vlm.model.language_model.norm.weight"] = np.zeros(48, np.float32)
  export.write_safetensors(tensors, path)
  with pytest.raises(strict.StrictLoadError, match=r"guidance.motion_proj.weight: shape \(48, 41\) != expected "
                     r"\(48, 40\) \(parameter guidance/motion_proj/dense/kernel\)"):
    export.load_export(str(tmp_path))
  with pytest.raises(lamp_torch.ExportMismatchError, match=r"guidance.motion_proj.weight: shape \(48, 41\)"):
    lamp_torch.from_pretrained(str(tmp_path))


def test_config_and_tensors_disagree_or_files_are_damaged(tmp_path):
  _export(export_helpers.random_params(TINY, seed=4), TINY, tmp_path)
  config_path = tmp_path / export_format.CONFIG_FILE
  config = json.loads(config_path.read_text())
  edited = copy.deepcopy(config)
  edited["model"]["action"]["width"] = 42  # the modules are built from config.json
  config_path.write_text(json.dumps(edited))
  with pytest.raises(lamp_torch.ExportMismatchError) as e:
    lamp_torch.from_pretrained(str(tmp_path))
  assert "action_expert.action_in.weight: shape (36, 7) != (42, 7) from config.json" in str(e.value)
  assert len(e.value.mismatched) > 20  # every action-expert tensor is listed, not just the first
  edited = copy.deepcopy(config)
  del edited["model"]["motion"]["num_heads"]
  config_path.write_text(json.dumps(edited))
  with pytest.raises(export_format.ExportFormatError, match="has no field 'model.motion.num_heads'"):
    lamp_torch.from_pretrained(str(tmp_path))
  config_path.write_text(json.dumps(dict(config, kind="openvla")))
  with pytest.raises(ValueError, match="config.json field kind='openvla' is not a known policy kind"):
    lamp_torch.from_pretrained(str(tmp_path))
  config_path.write_text(json.dumps(dict(config, kind="pi0")))
  with pytest.raises(ValueError, match="config.json field kind='pi0' but model.name='lamp'"):
    lamp_torch.from_pretrained(str(tmp_path))
  config_path.write_text(json.dumps(dict(config, format_version=99)))
  with pytest.raises(export_format.ExportFormatError, match="format_version=99"):
    lamp_torch.from_pretrained(str(tmp_path))
  config_path.write_text(json.dumps(config))
  model_path = tmp_path / export_format.MODEL_FILE
  data = model_path.read_bytes()
  model_path.write_bytes(data[:len(data) // 2])
  with pytest.raises(export_format.ExportFormatError, match="truncated"):
    lamp_torch.from_pretrained(str(tmp_path))
  with pytest.raises(export_format.ExportFormatError, match=r"is truncated: tensor \S+ ends at byte"):
    export.load_export(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="export directory .*nothing does not exist"):
    lamp_torch.from_pretrained(str(tmp_path / "nothing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="not an export directory"):
    lamp_torch.from_pretrained(str(tmp_path / "empty"))


def test_file_size_from_shapes_alone_equals_the_written_file(tmp_path):
  info = _export(export_helpers.random_params(TINY, seed=5), TINY, tmp_path)
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(tmp_path / export_format.MODEL_FILE).st_mode & 0o777 == 0o666 & ~umask  # not safetensors' 0600
  predicted = export.predicted_size(TINY)
  assert predicted["bytes"] == info["bytes"] == os.path.getsize(tmp_path / export_format.MODEL_FILE)
  assert predicted["tensors"] == info["tensors"]
  assert predicted["parameters"] == sum(x.size for x in jax.tree.leaves(lamp.abstract_params(TINY)))


def test_paper_size_export_is_computed_without_allocating():
  paper = export.predicted_size(lamp.model_config("paper"))
  assert 3.6e9 < paper["parameters"] < 3.8e9  # PaliGemma 3B + ~0.3 B motion expert + ~0.4 B action expert
  assert paper["bytes"] > 4 * paper["parameters"]  # float32 data + header
  assert paper["bytes"] - 4 * paper["parameters"] < 2e5
  pi0_paper = export.predicted_size(pi0.model_config("paper"))
  expert = sum(x.size for x in jax.tree.leaves(export.layout(pi0.model_config("paper"))[1]["action_expert"]))
  paligemma = pi0_paper["parameters"] - expert
  # PaliGemma 3B (2.92 B) + π0's Gemma 300M expert: 18 layers of 17.3 M + the suffix projections (3.2 M).
  assert 2.9e9 < paligemma < 2.95e9 and 3.2e9 < pi0_paper["parameters"] < 3.26e9
  assert 0 < pi0_paper["bytes"] - 4 * pi0_paper["parameters"] < 2e5


def _toy_checkpoint(workdir):
  config = toy_train_config.get_config("")
  toy = toy_model.LIBRARY
  params = jax.tree.map(np.asarray, toy.init_params(config.model, jax.random.PRNGKey(0),
                                                    toy.dummy_batch(config.model, 1, 0)))
  export_helpers.write_checkpoint(workdir, config, params)


def test_export_checkpoint_writes_the_policy_with_its_preprocessing(tmp_path):
  config, model_cfg, params, ema = export_helpers.sim_checkpoint(tmp_path / "run")
  info = export.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "out"))
  assert info["params"] == "ema_params" and info["step"] == 3
  back, _, exported = export.load_export(str(tmp_path / "out"))
  for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)
  assert exported["kind"] == "lamp" and exported["source"]["params"] == "ema_params"
  assert exported["inputs"]["camera_keys"] == {"image_primary": "image_0", "image_wrist": "image_2"}
  assert exported["inputs"]["resize"] and exported["inputs"]["image_size"] == [32, 32]
  norm = exported["normalization"]
  assert norm["action_mode"] == "bounds" and norm["proprio_mode"] == "normal"
  assert norm["action_mask"] == [True] * 6 + [False]
  assert norm["statistics"]["dataset"] == config.data.pipeline.datasets[0].name
  assert exported["tokenizer"]["kind"] == "words" and exported["tokenizer"]["max_len"] == 12
  assert exported["vlm"]["vision"]["width"] == 32 and exported["vlm"]["llm"]["head_dim"] == 16
  assert "model.safetensors" in (tmp_path / "out" / export_format.README_FILE).read_text()

  raw = export.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "raw"), ema=False)
  assert raw["params"] == "params"
  back, _, _ = export.load_export(str(tmp_path / "raw"))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # two processes importing JAX + TensorFlow (~30 s each on 2 cores)
def test_export_cli(tmp_path):
  export_helpers.sim_checkpoint(tmp_path / "run", ema_decay=0.0)
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  cmd = [sys.executable, "-m", "lamp_jax.export", f"--checkpoint={tmp_path / 'run'}", f"--out={tmp_path / 'out'}"]
  proc = subprocess.run(cmd + ["--step=3"], cwd=export_helpers.REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = json.loads(proc.stdout.strip().splitlines()[-1])
  assert info["params"] == "params" and info["tensors"] == 136 and os.path.isfile(info["out"] + "/config.json")
  proc = subprocess.run(cmd + ["--ema"], cwd=export_helpers.REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode != 0 and "--ema: checkpoint" in proc.stderr and "ema.decay=0.0" in proc.stderr


def test_requiring_ema_of_a_run_without_it_is_an_error(tmp_path):
  export_helpers.sim_checkpoint(tmp_path / "run", ema_decay=0.0)
  with pytest.raises(ValueError, match=r"--ema: checkpoint \S+ step 3 has no EMA parameters \(run config "
                     r"ema.decay=0.0\)"):
    export.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "out"), ema=True)
  assert export.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "out"))["params"] == "params"


def test_bad_checkpoints_give_clear_errors(tmp_path):
  _toy_checkpoint(tmp_path / "toy")
  with pytest.raises(ValueError, match=r"cannot export a model of kind 'tests.toy_model' \(config field model.name\); "
                     r"exportable kinds: \['lafp', 'lamp', 'pi0'\]"):
    export.export_checkpoint(str(tmp_path / "toy"), str(tmp_path / "out"))
  export_helpers.sim_checkpoint(tmp_path / "run")
  # Orbax spreads the state's arrays over several data files and which file holds the exported ema_params is not
  # fixed (truncating only the largest file once left ema_params intact and the export, rightly, succeeded): halve
  # every data file of the state item.
  data_files = glob.glob(str(tmp_path / "run" / "checkpoints" / "3" / "state" / "**" / "d" / "*"), recursive=True)
  assert data_files
  for data_file in data_files:
    with open(data_file, "r+b") as f:
      f.truncate(os.path.getsize(data_file) // 2)
  with pytest.raises(ckpt_lib.CheckpointCorruptError, match=r"checkpoint step 3 in .* is corrupted or incomplete: ema_params of item state unreadable"):
    export.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out" / export_format.MODEL_FILE)


def test_vlm_tensors_load_into_transformers_paligemma(tmp_path):
  """The export's vlm.* tensors without the prefix are a strict state_dict of transformers' PaliGemma (5.x), whose
  prefix-LM hidden states then equal lamp_torch's VLM prefix features."""
  transformers = pytest.importorskip("transformers")
  _export(export_helpers.random_params(TINY, seed=6), TINY, tmp_path)
  policy = lamp_torch.from_pretrained(str(tmp_path))
  tensors = export.read_safetensors(str(tmp_path / export_format.MODEL_FILE))
  state = {k[len("vlm."):]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith("vlm.")}
  state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"]  # tied
  kwargs = {k: v for k, v in hf_paligemma.hf_config(TINY.vlm).items() if k not in ("architectures", "model_type")}
  hf_cfg = transformers.PaliGemmaConfig(**kwargs)
  hf_cfg._attn_implementation = "eager"
  hf = transformers.PaliGemmaForConditionalGeneration(hf_cfg).eval()
  hf.load_state_dict(state, strict=True)
  rng = np.random.default_rng(0)
  images = torch.from_numpy(rng.uniform(-1, 1, (2, 1, 24, 24, 3)).astype(np.float32))
  tokens = torch.from_numpy(rng.integers(3, 200, (2, 5)))
  token_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
  with torch.no_grad():
    ours, prefix_mask = policy.model.encode(images, torch.ones(2, 1, dtype=torch.bool), tokens, token_mask)
    n_img = hf_cfg.text_config.num_image_tokens
    ids = torch.cat([torch.full((2, n_img), hf_cfg.image_token_id), tokens], dim=1)
    ref = hf(input_ids=ids, pixel_values=images[:, 0].permute(0, 3, 1, 2), attention_mask=prefix_mask.long(),
             token_type_ids=torch.zeros_like(ids), position_ids=torch.cumsum(prefix_mask.long(), 1),
             output_hidden_states=True)
  real = prefix_mask.numpy()
  err = np.abs(ours.numpy()[real] - ref.hidden_states[-1].numpy()[real]).max()
  assert err <= 1e-4, err
  assert np.abs(ours.numpy()).max() > 1.0


@pytest.mark.slow  # a subprocess compiling the tiny sample_actions (~1 min on 2 shared cores)
@pytest.mark.parametrize("config, paper_parameters", [("configs/lamp.py:tiny", 3.6e9), ("configs/pi0.py:tiny", 3.2e9),
                                                      ("configs/lafp.py:smoke", None)])
def test_bench_torch_export_cli(config, paper_parameters):
  env = dict(os.environ, JAX_PLATFORMS="cpu", LAMP_JAX_ALLOCATOR="system")
  out = subprocess.run([sys.executable, "-m", "lamp_jax.perf.export_bench", f"--config={config}", "--repeats=2"],
                       cwd=export_helpers.REPO, env=env, capture_output=True, text=True, check=True)
  result = json.loads(out.stdout[out.stdout.index("{"):])
  assert result["what"] == "torch_export" and result["max_abs_diff_torch_vs_jax"] <= 1e-4
  assert result["file_bytes"] == result["predicted_bytes"]
  assert set(result["latency_ms"]) == {"jax", "torch", "torch_1_thread"}
  if paper_parameters is None:  # LAFP has no 'paper' variant
    assert result["paper"] is None
    return
  assert result["paper"]["float32"]["parameters"] == result["paper"]["bfloat16"]["parameters"] > paper_parameters
  assert result["paper"]["bfloat16"]["bytes"] < 0.51 * result["paper"]["float32"]["bytes"]


def test_pi0_expert_gemma_loads_into_transformers_gemma_model(tmp_path):
  """The export's action_expert.llm.* tensors without the prefix (plus an embedding, which the expert has none of)
  are a strict state_dict of transformers' GemmaModel, whose causal hidden states then equal lamp_torch's expert
  decoder's."""
  transformers = pytest.importorskip("transformers")
  _export(export_helpers.random_params(PI0, seed=6), PI0, tmp_path)
  policy = lamp_torch.from_pretrained(str(tmp_path))
  prefix = "action_expert.llm."
  tensors = export.read_safetensors(str(tmp_path / export_format.MODEL_FILE))
  state = {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith(prefix)}
  cfg = policy.config["expert_llm"]
  state["embed_tokens.weight"] = torch.zeros(cfg["vocab_size"], cfg["width"])
  hf_cfg = transformers.GemmaConfig(
      vocab_size=cfg["vocab_size"], hidden_size=cfg["width"], intermediate_size=cfg["mlp_dim"],
      num_hidden_layers=cfg["depth"], num_attention_heads=cfg["num_heads"], num_key_value_heads=cfg["num_kv_heads"],
      head_dim=cfg["head_dim"], rms_norm_eps=cfg["norm_eps"], rope_theta=cfg["rope_max_wavelength"],
      hidden_activation="gelu_pytorch_tanh")
  hf_cfg._attn_implementation = "eager"
  hf = transformers.GemmaModel(hf_cfg).eval()
  hf.load_state_dict(state, strict=True)
  rng = np.random.default_rng(0)
  embeds = torch.from_numpy(rng.normal(size=(2, 9, cfg["width"])).astype(np.float32))
  positions = torch.arange(9)[None].expand(2, 9)
  with torch.no_grad():
    ours, _ = policy.model.action_expert.llm.decode(embeds, positions, torch.ones(9, 9, dtype=torch.bool).tril()[None])
    ref = hf(inputs_embeds=embeds, position_ids=positions).last_hidden_state  # 5.x scales token ids' rows only
  err = float((ours - ref).abs().max())
  assert err <= 1e-4, err
  assert float(ours.abs().max()) > 1.0


def test_the_motion_image_head_and_its_vae_are_left_out_of_the_export(tmp_path):
  """Training-only parts are not exported: a policy with the motion-image head exports exactly the policy without
  it (config.json says motion_image.enabled=False; the tensors are those of the remaining subtrees, bit-exact)."""
  with_head = copy.deepcopy(TINY)
  with_head.use_motion = False
  with_head.motion_image.enabled = True
  with_head.loss.weights.update(dict(motion=0.0, motion_image=1.0))
  with_head.vae.scaling_factor = 1.3
  rs = np.random.RandomState(7)
  params = jax.tree.map(lambda s: np.asarray(rs.normal(0.0, 0.15, s.shape), s.dtype),
                        lamp.abstract_params(with_head))
  assert {"motion_image", "vae"} <= set(params)
  info = _export(params, with_head, tmp_path)
  back, model_cfg, config = export.load_export(str(tmp_path))
  assert not model_cfg.motion_image.enabled and not config["model"]["motion_image"]["enabled"]
  assert set(back) == {"vlm", "action_expert"}
  assert info["tensors"] == len(export.layout(model_cfg)[0])  # the entries of the policy without the head
  for name, value in strict.flatten(back).items():
    np.testing.assert_array_equal(value, strict.flatten(params)[name])


def test_lafps_frozen_latent_action_model_is_left_out_of_the_export(tmp_path):
  """LAFP's LAM is training-only (it gives the latent policy's targets): a trained LAFP's parameters (with 'lam')
  export exactly the policy (config.json without model.lam; no LAM tensor), bit-exact, loadable both ways."""
  training_cfg = lafp_config.model_config("tiny")
  rs = np.random.RandomState(8)
  params = jax.tree.map(lambda s: np.asarray(rs.normal(0.0, 0.15, s.shape), s.dtype),
                        registry.get("lafp").abstract_params(training_cfg))
  assert set(params) == {"vlm", "latent_policy", "action_decoder", "lam"}
  lam_tensors = len(jax.tree.leaves(params["lam"]))
  assert lam_tensors > 10
  info = _export(params, training_cfg, tmp_path)
  tensors = export.read_safetensors(str(tmp_path / export_format.MODEL_FILE))
  assert not [name for name in tensors if name.startswith("lam.") or ".lam." in name]
  assert {name.split(".")[0] for name in tensors} == {"vlm", "latent_policy", "action_decoder"}
  assert info["tensors"] == len(tensors) == len(export.layout(LAFP)[0])
  # The size predicted from the training config is that of its export (the LAM not counted).
  assert export.predicted_size(training_cfg)["bytes"] == info["bytes"] == export.predicted_size(LAFP)["bytes"]
  back, model_cfg, config = export.load_export(str(tmp_path))
  assert "lam" not in config["model"] and "lam" not in model_cfg and config["kind"] == "lafp"
  assert model_cfg.to_dict() == LAFP.to_dict()
  assert set(back) == {"vlm", "latent_policy", "action_decoder"}
  for name, value in strict.flatten(back).items():
    np.testing.assert_array_equal(value, strict.flatten(params)[name])
  assert sorted(lamp_torch.from_pretrained(str(tmp_path)).model.state_dict()) == sorted(tensors)


def test_lafp_export_refuses_bad_input_naming_every_problem(tmp_path):
  params = export_helpers.random_params(LAFP, seed=3)
  flat = strict.flatten(params)
  entries, abstract = export.layout(LAFP)
  broken = dict(flat)
  del broken["action_decoder/norm_out/ln/bias"]
  broken["action_decoder/extra"] = np.zeros(3, np.float32)
  with pytest.raises(strict.StrictLoadError) as e:
    export.torch_export.to_torch_tensors(strict.unflatten(broken), entries, abstract)
  assert e.value.missing == ["action_decoder/norm_out/ln/bias"] and e.value.unexpected == ["action_decoder/extra"]
  reshaped = dict(flat, **{"action_decoder/output_proj/dense/kernel": np.zeros((36, 34), np.float32)})
  with pytest.raises(strict.StrictLoadError, match=r"action_decoder/output_proj/dense/kernel: shape \(36, 34\) "
                     r"!= expected \(36, 35\)"):
    export.torch_export.to_torch_tensors(strict.unflatten(reshaped), entries, abstract)

  _export(params, LAFP, tmp_path)
  path = str(tmp_path / export_format.MODEL_FILE)
  tensors = {k: np.array(v) for k, v in export.read_safetensors(path).items()}
  del tensors["action_decoder.fc2_1.weight"]
  tensors["lam.idm.out.weight"] = np.zeros((11, 4), np.float32)  # a LAM tensor is foreign to an export
  tensors["latent_policy.action_in.weight"] = np.zeros((36, 12), np.float32)  # code_dim is 11
  export.write_safetensors(tensors, path)
  with pytest.raises(strict.StrictLoadError) as e:  # JAX import
    export.load_export(str(tmp_path))
  assert e.value.missing == ["action_decoder.fc2_1.weight"] and e.value.unexpected == ["lam.idm.out.weight"]
  with pytest.raises(lamp_torch.ExportMismatchError) as e:  # PyTorch import
    lamp_torch.from_pretrained(str(tmp_path))
  assert e.value.missing == ["action_decoder.fc2_1.weight"] and e.value.unexpected == ["lam.idm.out.weight"]
  assert e.value.mismatched == ["latent_policy.action_in.weight: shape (36, 12) != (36, 11) from config.json"]

  _export(params, LAFP, tmp_path)
  config_path = tmp_path / export_format.CONFIG_FILE
  config = json.loads(config_path.read_text())
  edited = copy.deepcopy(config)
  edited["model"]["decoder"]["width"] = 40  # the modules are built from config.json
  config_path.write_text(json.dumps(edited))
  with pytest.raises(lamp_torch.ExportMismatchError, match=r"action_decoder.input_proj.weight: shape \(36, 38\) "
                     r"!= \(40, 38\) from config.json"):
    lamp_torch.from_pretrained(str(tmp_path))
  edited = copy.deepcopy(config)
  del edited["model"]["latent"]["code_dim"]
  config_path.write_text(json.dumps(edited))
  with pytest.raises(export_format.ExportFormatError, match="has no field 'model.latent.code_dim'"):
    lamp_torch.from_pretrained(str(tmp_path))
  config_path.write_text(json.dumps(dict(config, kind="pi0")))
  with pytest.raises(ValueError, match="config.json field kind='pi0' but model.name='lafp'"):
    lamp_torch.from_pretrained(str(tmp_path))
  config_path.write_text(json.dumps(config))
  policy = lamp_torch.from_pretrained(str(tmp_path))
  assert policy.model.noise_shapes(2) == {"latent": (2, 3, 11)}
  inputs = {"images": torch.zeros(1, 2, 24, 24, 3), "image_mask": torch.ones(1, 2, dtype=torch.bool),
            "tokens": torch.ones(1, 5, dtype=torch.int64), "token_mask": torch.ones(1, 5, dtype=torch.bool),
            "proprio": torch.zeros(1, LAFP.proprio_dim)}
  with pytest.raises(ValueError, match=r"noise has entries \['action'\]; expected \['latent'\]"):
    policy.model.sample_actions(inputs, {"action": torch.zeros(1, 5, 7)})
  with pytest.raises(ValueError, match=r"noise\['latent'\] has shape \(1, 3, 7\); expected \(1, 3, 11\)"):
    policy.model.sample_actions(inputs, {"latent": torch.zeros(1, 3, 7)})

  # A FiLM-CNN prefix encoder has no PyTorch port: refused by name, as for LaMP.
  film = lamp.model_config("tiny")
  film.vlm.kind, film.vlm.vocab_size = "film_cnn", 37
  film_lafp = lafp_config.from_policy(film, lafp_config.single_view_lam("tiny", int(film.action_horizon)))
  with pytest.raises(ValueError, match=r"model\.vlm\.kind='film_cnn'"):
    export.layout(lafp.without_lam(film_lafp))
