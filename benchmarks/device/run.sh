# one device call: pre-train the toy-world model on the GPU, check it, personalise once
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, diffusers, transformers, peft, accelerate; print(torch.__version__, diffusers.__version__, transformers.__version__, peft.__version__, accelerate.__version__)"
imprint() { python3 -c "import sys; from imprint.cli import main; sys.exit(main(sys.argv[1:]))" "$@"; }
t0=$(date +%s)
imprint toyworld pretrain --output /tmp/model --device cuda 2>&1 | tr '\r' '\n' | grep -v '^\s*$' > $OUT/pretrain.log
echo "pretrain rc=${PIPESTATUS[0]} $(( $(date +%s) - t0 )) s"; grep -v "step/s\|scene/s" $OUT/pretrain.log | tail -5; tail -2 $OUT/pretrain.log
cp /tmp/model/pretrain.json $OUT/
(cd /tmp && tar cf - model | split -b 15M - $OUT/model.tar.)
python3 benchmarks/device/pretrain_check.py /tmp/model $OUT 2>&1 | tee $OUT/check.json | grep -v Loading
imprint toyworld subjects --output /tmp/subjects > /dev/null
for lr in 1e-3 3e-3; do
  t0=$(date +%s)
  imprint train --model /tmp/model --images /tmp/subjects/emblem_star --class-name star --method lora --rank 8 \
    --lr $lr --steps 300 --batch-size 4 --resolution 64 --prior-preservation --num-class-images 50 \
    --class-images /tmp/class --instance-prompt "a {token} {class_name}" --class-prompt "a {class_name}" \
    --output /tmp/run-$lr --sample-every 0 --checkpoint-every 0 > $OUT/train-$lr.log 2>&1
  echo "train lr=$lr rc=$? $(( $(date +%s) - t0 )) s"
  imprint evaluate /tmp/run-$lr --metrics toyworld --images-per-prompt 4 --steps 20 2>&1 | grep -v Loading | tail -4
done
