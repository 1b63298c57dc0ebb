#!/usr/bin/env bash
# Packs everything a lent GPU machine needs to check bst, for a machine with no Rust on it
# (the workplace's `device` tool; see scripts/device-run.sh, which runs there):
#   .devkit/kit.tar.xz   every test binary of the workspace and bst-train (debug-stripped),
#                        with a manifest saying which package folder each test runs in
#   .devkit/paths        the absolute source and target folders the binaries were built
#                        with (tests find their data through CARGO_MANIFEST_DIR and
#                        CARGO_BIN_EXE_bst-train); device-run.sh links those paths there
#   data/ml-100k         fetched if missing (the ml-100k tests read it)
#   .gl/                 Vulkan's loader as Debian packages (the machine has the NVIDIA
#                        driver but no loader)
# Then, through the device tool, from the repository root:
#   run(command="scripts/device-run.sh", carry=[".devkit", ".gl", "data"], timeout_s=600)
# Rebuild the kit after every change: the binaries are what gets tested.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
KIT="$ROOT/.devkit"
STAGE="$(mktemp -d -t bst-devkit-XXXXXX)"
trap 'rm -rf "$STAGE"' EXIT

scripts/fetch-data.sh

if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
  echo "device-kit: downloading Vulkan's loader packages into .gl/"
  mkdir -p .gl /tmp/bst-apt-amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/bst-apt-amd64'
  # shellcheck disable=SC2086
  apt-get $o update >/dev/null
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi

echo "device-kit: building bst-train (release) and the test binaries"
cargo build --release --quiet -p bst-train
mkdir -p "$STAGE/tests" "$STAGE/debug" "$STAGE/release"
cargo test --workspace --no-run --message-format=json 2>"$STAGE/build.log" | python3 -c '
import json, os, shutil, sys
stage = sys.argv[1]
with open(os.path.join(stage, "manifest"), "w") as manifest:
    for line in sys.stdin:
        m = json.loads(line)
        if m.get("reason") != "compiler-artifact" or not m.get("executable"):
            continue
        exe, name = m["executable"], m["target"]["name"]
        if m["profile"]["test"]:
            shutil.copy(exe, os.path.join(stage, "tests", name))
            package = os.path.dirname(m["manifest_path"])
            manifest.write(f"{package}\t{name}\n")
        elif name == "bst-train":  # CARGO_BIN_EXE_bst-train of the CLI tests
            shutil.copy(exe, os.path.join(stage, "debug", name))
' "$STAGE" || { cat "$STAGE/build.log" >&2; exit 1; }
rm "$STAGE/build.log"
cp "$TARGET/release/bst-train" "$STAGE/release/"
strip --strip-debug "$STAGE"/tests/* "$STAGE"/debug/* "$STAGE"/release/*

mkdir -p "$KIT"
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo -dirty)"
printf 'ROOT=%s\nTARGET=%s\nCOMMIT=%s\n' "$ROOT" "$TARGET" "$commit" > "$KIT/paths"
# One large dictionary: the binaries share most of their code, so xz stores it about once.
tar cf - -C "$STAGE" . | xz -T1 --lzma2=preset=9,dict=256MiB > "$KIT/kit.tar.xz"
echo "device-kit: $(wc -l < "$STAGE/manifest") test binaries, $(du -h "$KIT/kit.tar.xz" | cut -f1) in $KIT/kit.tar.xz"
