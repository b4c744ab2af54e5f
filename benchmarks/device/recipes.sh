# one device call: the toy-world pre-training recipes side by side on the GPU (benchmarks/toyworld_recipes.py)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 benchmarks/toyworld_recipes.py --device cuda --out /tmp/recipes --steps ${STEPS:-4000} --deadline ${DEADLINE:-420} \
  --variants ${VARIANTS:-eps,eps-offset,eps-attn16,v-snr,v-snr1,eps-b128,v-snr-b128,eps-offset-attn16}
for f in /tmp/recipes/*.log; do echo "== $f"; tr '\r' '\n' < $f | grep -v "^\s*$" | tail -3; done
cp /tmp/recipes/recipes.json $OUT/ 2>/dev/null
tar czf $OUT/recipes.tgz -C /tmp/recipes --exclude=models .
