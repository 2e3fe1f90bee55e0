#!/usr/bin/env bash
# Every speed table of benchmarks/README.md on a CUDA GPU: bfloat16 weights and states, SDPA attention, each of our
# strategies with and without compiled single-byte steps, against the token-level Llama with and without compile.
#
#   bash benchmarks/gpu.sh                                   # on a CUDA machine: benchmarks/results/cuda-bfloat16/
#   DEVICE=cpu DTYPE=bfloat16 QUICK=1 bash benchmarks/gpu.sh # the same steps, small sizes, on a CPU
#
# Environment: DEVICE (default cuda), DTYPE (bfloat16, float16 or float32), QUICK=1 (2 prompts, 32 bytes, the
# shipped size only: a smoke run), OUT (default benchmarks/results/$DEVICE-$DTYPE). An existing OUT is never
# overwritten: move it away first. Each table is a markdown file next to the JSON that benchmarks/plot.py reads.
set -euo pipefail

cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
DTYPE="${DTYPE:-bfloat16}"
OUT="${OUT:-benchmarks/results/$DEVICE-$DTYPE}"
MODEL=src/blt_diffusion/checkpoints/blt-d8-stdlib

if [[ -e "$OUT" ]]; then
    echo "gpu.sh: $OUT exists; move it away or set OUT to another directory" >&2
    exit 2
fi
if [[ "$DEVICE" == cuda* ]] && ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu.sh: DEVICE=$DEVICE but torch sees no CUDA device (torch.cuda.is_available() is False)" >&2
    exit 2
fi

if [[ -n "${QUICK:-}" ]]; then
    diffusion_sizes=(--prompts 2 --new-bytes 32 --eval-rows 2)
    tokenized_sizes=(--sizes shipped --prompts 2 --new-bytes 32 --batch-sizes 1 2)
else
    diffusion_sizes=(--prompts 50 --eval-rows 64)
    tokenized_sizes=(--sizes shipped 40M --prompts 32 --batch-sizes 1 8 32)
fi
common=(--device "$DEVICE" --dtype "$DTYPE" --compile)

mkdir -p "$(dirname "$OUT")"
staging="$(mktemp -d "$(dirname "$OUT")/.gpu-XXXXXX")"
trap 'rm -rf "$staging"' EXIT

echo "gpu.sh: strategies on the shipped model ($DEVICE, $DTYPE)" >&2
python benchmarks/bench_diffusion.py --model "$MODEL" "${common[@]}" "${diffusion_sizes[@]}" \
    --block-sizes 4 8 --confidence-thresholds 0.5 0.9 --entropy-bounds 1.0 --draft-lengths 8 16 \
    --verified-block-sizes 8 --json "$staging/diffusion.json" > "$staging/diffusion.md"

echo "gpu.sh: against a token-level Llama of the same size ($DEVICE, $DTYPE)" >&2
python benchmarks/bench_tokenized.py "${common[@]}" "${tokenized_sizes[@]}" \
    --json "$staging/tokenized.json" > "$staging/tokenized.md"

# Only a complete run takes OUT's name.
mv "$staging" "$OUT"
trap - EXIT
echo "gpu.sh: tables in $OUT (diffusion.md, tokenized.md) and their JSON" >&2
