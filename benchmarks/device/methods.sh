# one device call: the toy-world base-model and personalisation benchmarks on the GPU
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name --format=csv,noheader
touch $OUT/RESULTS.md
python3 benchmarks/toyworld_quality.py --part base --results $OUT/RESULTS.md --work /tmp/tw 2>&1 | grep -v "Loading\|Warn"
python3 benchmarks/toyworld_quality.py --part methods --subjects 10 --no-prior 5 --others 3 --work /tmp/tw \
  --json-out $OUT/methods.json --results $OUT/RESULTS.md 2>&1 | grep '^{"config\|Error\|error' | cut -c1-400
