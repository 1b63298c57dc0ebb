#!/usr/bin/env bash
# The test suite: fetches MovieLens-100k if needed, then runs every test of the workspace.
# GPU tests run on the Vulkan backend (on a machine without a GPU: Mesa's lavapipe, see
# .ci/run) and fail when no Vulkan adapter exists, unless BST_SKIP_GPU_TESTS=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/fetch-data.sh
export NODEVICE_SELECT=1 WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
# With Open MPI installed (mpirun; .ci/run installs it) the workspace builds once with
# bst-train's `mpi` feature, which adds the data-parallel test (bst-train/tests/mpi.rs,
# `mpirun -n 2`); building the suite once without it and once with it would compile the
# dependencies twice (the feature changes syn's features). BST_NO_MPI=1 leaves it out.
if command -v mpirun >/dev/null && [ "${BST_NO_MPI:-0}" != 1 ]; then
  cargo test --workspace --features bst-train/mpi "$@"
else
  cargo test --workspace "$@"
fi
