#!/usr/bin/env bash
# Train on every GPU of this machine, or on several machines, with torchrun.
#
#   scripts/torchrun.sh -c configs/voc_blended.yaml data.root=/data/VOC2012 model.weights=/w/resnet101.pth
#
# Several machines (run the same command on each; one of them is the rendezvous host):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 scripts/torchrun.sh -c ...      # on host0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=host0 scripts/torchrun.sh -c ...      # on host1
#
# A worker that dies is restarted (MAX_RESTARTS times, default 3) and the run continues from its
# last checkpoint by itself. Everything after the script's name goes to `prcl train`.
set -euo pipefail

GPUS=${GPUS:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
MAX_RESTARTS=${MAX_RESTARTS:-3}

if [ "$NNODES" -gt 1 ]; then
    rendezvous=(--rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "${RUN_ID:-prcl}")
else
    rendezvous=(--standalone)
fi

exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS" \
    --max-restarts "$MAX_RESTARTS" "${rendezvous[@]}" -m prcl train "$@"
