#!/bin/sh
# SageMaker starts the container as `docker run <image> serve`; anything else runs as a fraudscore command.
set -e
if [ "$1" = "serve" ]; then
  shift
  exec fraudscore serve --sagemaker --host 0.0.0.0 --port "${SAGEMAKER_BIND_TO_PORT:-8080}" \
       --model-dir "${SM_MODEL_DIR:-/opt/ml/model}" "$@"
fi
exec fraudscore "$@"
