#!/usr/bin/env bash
# The test suite: fetches MovieLens-100k if needed, then runs every test of the workspace.
# GPU tests run on the Vulkan backend (on a machine without a GPU: Mesa's lavapipe, see
# .ci/run) and fail when no Vulkan adapter exists, unless BST_SKIP_GPU_TESTS=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/fetch-data.sh
export NODEVICE_SELECT=1 WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
cargo test --workspace "$@"
