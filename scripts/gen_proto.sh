#!/usr/bin/env bash
# Regenerate the committed *_pb2.py modules from the .proto files (needs grpcio-tools 1.62.x, which
# bundles libprotoc 25 to match the protobuf 4.25 runtime; a newer protoc emits code 4.25 cannot import).
set -euo pipefail
cd "$(dirname "$0")/../trainer_image"
"${PYTHON:-python3}" -m grpc_tools.protoc -I . --python_out=. kestrel_trainer/spec/proto/*.proto
