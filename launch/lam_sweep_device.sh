#!/usr/bin/env bash
# The latent-action-model sweeps of launch/lam_sweep.py on one accelerator machine without TensorFlow, in one go:
#   1. 'levers': the quantisation levers on sim_mvp_explore (one seed);
#   2. 'mvp3' with the lever whose codes the decoder reads most ('best_lever'; 'continuous' when none does):
#      single view / multi-view without the cross-view term / MVP-LAM, 3 seeds each;
#   3. 'mvp3' with the continuous latent (the reference), unless step 2 already ran it.
# Each run writes OUT_DIR/<sweep>/<run>.{json,npz,params.msgpack} as soon as it ends, so a run cut short by a time
# limit keeps what finished. Tables: `python launch/lam_sweep.py analyze --out=OUT_DIR/<sweep>` (here or there).
#
#   bash launch/lam_sweep_device.sh FRAMES_FILE OUT_DIR [STEPS]
#
# FRAMES_FILE comes from `python launch/lam_sweep.py export` (on a machine with TensorFlow). Wheels in .whl/
# (flax, optax, ml_collections at this project's pins) are installed first when the directory exists.
set -euo pipefail
frames=${1:?usage: bash launch/lam_sweep_device.sh FRAMES_FILE OUT_DIR [STEPS]}
out=${2:?usage: bash launch/lam_sweep_device.sh FRAMES_FILE OUT_DIR [STEPS]}
steps=${3:-2000}
python=${PYTHON:-python3}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}. PYTHONUNBUFFERED=1
if [ -d .whl ]; then "$python" -m pip install -q --no-deps .whl/*.whl || exit 1; fi
mkdir -p "$out"
cache="$out/.jax_cache"
sweep() { "$python" launch/lam_sweep.py train --data="$frames" --steps="$steps" --compilation_cache="$cache" "$@"; }
sweep --sweep=levers --out="$out/levers" 2>&1 | tee "$out/levers.log"
ls "$out"/levers/levers_*.json > /dev/null  # the levers sweep wrote its runs (else stop here: set -e)
lever=$("$python" launch/lam_sweep.py best_lever --out="$out/levers")
echo "[lam_sweep_device] mvp3 lever: $lever"
sweep --sweep=mvp3 --lever="$lever" --out="$out/mvp3_$lever" 2>&1 | tee "$out/mvp3_$lever.log"
if [ "$lever" != continuous ]; then
  sweep --sweep=mvp3 --lever=continuous --out="$out/mvp3_continuous" 2>&1 | tee "$out/mvp3_continuous.log"
fi
rm -rf "$cache"
