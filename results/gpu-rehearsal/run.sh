#!/bin/bash
# GPU checks for issue 13 (items 3 and 4): the bf16 step-0 test and the paper rehearsal on one GPU.
set -o pipefail
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl >$OUT/pip.log 2>&1 || { tail -20 $OUT/pip.log; exit 1; }
echo "install: $(( $(date +%s) - start )) s"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/device.txt
python3 -c "import torch, transformers, trl, dvc, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'dvc', dvc.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.is_bf16_supported())" | tee -a $OUT/device.txt
which git || echo "NO GIT"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_trainer.py -k "bf16_gpu" -s 2>&1 | tee $OUT/gpu_test.log | tail -25
echo "test done: $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > $OUT/gpumem.csv &
SMI=$!
timeout 330 python3 -m stages bench --only paper --imdb .gpu/imdb --out $OUT/bench.json 2>&1 | tee $OUT/rehearsal.log | tail -40
kill $SMI; echo "GPU memory used, max over the rehearsal: $(sort -n $OUT/gpumem.csv | tail -1) MiB"
echo "rehearsal done: $(( $(date +%s) - start )) s"
cat $OUT/bench.md 2>/dev/null
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
