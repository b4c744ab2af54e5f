# one device call: retrain the toy-world evaluator (degradation-augmented) on the GPU, then check it
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
t0=$(date +%s)
python3 -c "import sys; from imprint.cli import main; sys.exit(main(sys.argv[1:]))" toyworld train-evaluator \
  --output $OUT/evaluator.safetensors --device cuda 2>&1 | tr '\r' '\n' | grep -v "step/s\|^\s*$" | tail -4
echo "train-evaluator $(( $(date +%s) - t0 )) s"
python3 - <<'PY'
import os, torch
from diffusers import AutoencoderKL
from imprint.toyworld.pretrain import vae_subject_fidelity
from imprint.toyworld.evaluator import WEIGHTS
vae = AutoencoderKL.from_pretrained(".vae_check")
out = os.environ["OUT"] + "/evaluator.safetensors"
print("VAE round trip of subject photos, identity cosine: new", vae_subject_fidelity(vae, "cpu", out),
      "old", vae_subject_fidelity(vae, "cpu", WEIGHTS))
PY
