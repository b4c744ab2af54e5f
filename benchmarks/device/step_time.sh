# one device call: issue 13's GPU step time: SD1.5 architecture (random weights), 512 px, bf16, LoRA r16,
# batch 1, imprint's --compile off / regional / full and the bare step's attention and AdamW variants
# (benchmarks/step_time.py --options); SimpleTuner's published 0.181 s/step on an H100 is the figure to beat.
# Prepare here first (the device machine reaches no index):
#   pip download --no-deps -d .whl diffusers transformers peft accelerate safetensors tokenizers huggingface-hub
# then run with `run` (carry nothing; .whl/ is an untracked folder, so it travels), a timeout of about 480 s,
# and merge the section of $OUT/RESULTS.md into benchmarks/RESULTS.md. It needs the DreamBench dog and cat photos:
#   mkdir -p shared/dreambench && cp -r ../shared/dreambench/dog ../shared/dreambench/cat shared/dreambench/  (untracked: they travel)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 benchmarks/step_time.py --options --device cuda --mixed-precision bf16 --resolution 512 --rank 16 \
  --steps ${STEPS:-20} --warmup ${WARMUP:-5} --option-timeout ${COMPILE_MINUTES:-3} --results $OUT/RESULTS.md
