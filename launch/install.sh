#!/usr/bin/env bash
# Installs lamp_jax and JAX for TPU on every worker of the slice.
# TPU VM images ship Python 3.10; setup.py needs 3.11, so a 3.11 venv is made with uv.
#   ./launch/install.sh               (copies this checkout: 'git archive HEAD', uncommitted changes excluded)
#   REPO_URL=https://github.com/you/lamp_jax.git REPO_REF=v0.1 ./launch/install.sh
source "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."

if [[ -z "${REPO_URL}" ]]; then
  archive="$(mktemp -d)/lamp_jax.tar.gz"
  git archive --format=tar.gz -o "${archive}" HEAD
  echo "copying $(git rev-parse --short HEAD) to every worker"
  "${GCLOUD_TPU[@]}" tpu-vm scp "${archive}" "${TPU_NAME}:~/lamp_jax.tar.gz" --zone="${ZONE}" --worker=all
  fetch="rm -rf \$HOME/${REMOTE_DIR} && mkdir -p \$HOME/${REMOTE_DIR} && tar -xzf \$HOME/lamp_jax.tar.gz -C \$HOME/${REMOTE_DIR}"
else
  fetch="rm -rf \$HOME/${REMOTE_DIR} && git clone -q ${REPO_URL} \$HOME/${REMOTE_DIR} && git -C \$HOME/${REMOTE_DIR} checkout -q ${REPO_REF}"
fi

on_all_workers "set -e
${fetch}
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
export PATH=\$HOME/.local/bin:\$PATH
uv venv -q --python 3.11 \$HOME/${VENV_DIR}
source \$HOME/${VENV_DIR}/bin/activate
uv pip install -q 'jax[tpu]==${JAX_VERSION}'
uv pip install -q -e \$HOME/${REMOTE_DIR}
python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count(), jax.devices()[0].device_kind)'
"
echo "installed on every worker; next: ./launch/train.sh"
