#!/usr/bin/env bash
# Fetches MovieLens-100k in RecBole's atomic format (spec 1.3, section 5) into
# data/ml-100k/ at the repository root (git-ignored: never commit the data).
#
# The files come from the PyPI wheel recbole==1.2.1 (recbole/dataset_example/ml-100k/).
# The wheel and every extracted file are checked against pinned sha256 sums.
# Idempotent: when all files are already present with the right sums, nothing is fetched.
#
# Needs: python3 with pip, and access to PyPI. Works from any directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/data/ml-100k"
WHEEL="recbole-1.2.1-py3-none-any.whl"
WHEEL_SHA256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MEMBER_DIR="recbole/dataset_example/ml-100k"

# File name and sha256 of each extracted file.
FILES=(
  "ml-100k.inter 4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
  "ml-100k.item 51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"
  "ml-100k.kg 200a0636fa07c218119a42e5bac7aa3e26e3665a6f919c1b22909bd412b14779"
  "ml-100k.link 524dca2c3d62619688ab99b3ec53ea2acb9b64d38eafec3e02bdd0dc6bb7d948"
  "ml-100k.user 4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972"
)

# sha256 of a file (python, so it works where sha256sum is missing).
sha256() {
  python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

# True when every file in $1 has its pinned sum.
all_present() {
  local dir="$1" entry name sum
  for entry in "${FILES[@]}"; do
    read -r name sum <<<"$entry"
    [[ -f "$dir/$name" && "$(sha256 "$dir/$name")" == "$sum" ]] || return 1
  done
}

if all_present "$DEST"; then
  echo "data/ml-100k: all files present with the pinned sha256 sums; nothing to do"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# pip refuses the wheel unless it matches the pinned hash.
echo "recbole==1.2.1 --hash=sha256:$WHEEL_SHA256" >"$TMP/requirements.txt"
echo "downloading $WHEEL from PyPI ..."
python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
  -r "$TMP/requirements.txt" -d "$TMP/wheel"

got="$(sha256 "$TMP/wheel/$WHEEL")"
if [[ "$got" != "$WHEEL_SHA256" ]]; then
  echo "error: $WHEEL has sha256 $got, expected $WHEEL_SHA256" >&2
  exit 1
fi

# Extract only the ml-100k folder, flat, into a staging folder.
python3 - "$TMP/wheel/$WHEEL" "$MEMBER_DIR" "$TMP/ml-100k" <<'PY'
import os, sys, zipfile
wheel, prefix, out = sys.argv[1], sys.argv[2].rstrip("/") + "/", sys.argv[3]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
    if not names:
        sys.exit(f"error: {wheel} holds nothing under {prefix}")
    for n in names:
        with open(os.path.join(out, os.path.basename(n)), "wb") as f:
            f.write(z.read(n))
PY

for entry in "${FILES[@]}"; do
  read -r name sum <<<"$entry"
  if [[ ! -f "$TMP/ml-100k/$name" ]]; then
    echo "error: $name is missing from $WHEEL" >&2
    exit 1
  fi
  got="$(sha256 "$TMP/ml-100k/$name")"
  if [[ "$got" != "$sum" ]]; then
    echo "error: $name has sha256 $got, expected $sum" >&2
    exit 1
  fi
done

mkdir -p "$DEST"
for entry in "${FILES[@]}"; do
  read -r name _ <<<"$entry"
  mv -f "$TMP/ml-100k/$name" "$DEST/$name"
done
echo "data/ml-100k: fetched and verified ${#FILES[@]} files into $DEST"
