"""A bst checkpoint's metadata and vocabulary, read with the standard library alone.

Spec section 3: the vocabulary JSON is the metadata value `bst.vocab`, or, when it is over
1 MiB (click logs with millions of items and users), a `U8` tensor `meta.vocab` holding
the same UTF-8 JSON, with `bst.vocab` set to `tensor:meta.vocab`. Loaders of model
weights skip tensors whose names start with `meta.`, `optim.` and `best.`.

    meta, vocab = read_metadata("runs/x/best.safetensors")
    cfg = json.loads(meta["bst.config"])
    weights = {k: v for k, v in load_file(path).items() if is_weight(k)}
"""

import json
import struct

VOCAB_IN_TENSOR = "tensor:meta.vocab"
VOCAB_TENSOR = "meta.vocab"
NOT_WEIGHTS = ("meta.", "optim.", "best.")


def is_weight(name):
    """Whether tensor `name` is a model weight (not data, optimiser state or best copy)."""
    return not name.startswith(NOT_WEIGHTS)


def read_header(path):
    """(header length in bytes, the safetensors header as a dict)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        return n, json.loads(f.read(n))


def read_metadata(path):
    """(metadata: dict of strings, vocabulary: the parsed `bst.vocab` JSON), reading the
    `meta.vocab` tensor's bytes when the vocabulary is stored there."""
    n, header = read_header(path)
    meta = header.get("__metadata__") or {}
    if "bst.vocab" not in meta:
        raise ValueError(f"{path}: not a bst checkpoint (no bst.vocab metadata)")
    text = meta["bst.vocab"]
    if text == VOCAB_IN_TENSOR:
        entry = header.get(VOCAB_TENSOR)
        if entry is None or entry["dtype"] != "U8":
            raise ValueError(f"{path}: bst.vocab points at a missing or non-U8 {VOCAB_TENSOR}")
        start, end = entry["data_offsets"]
        with open(path, "rb") as f:
            f.seek(8 + n + start)
            data = f.read(end - start)
        if len(data) != end - start:
            raise ValueError(f"{path}: truncated {VOCAB_TENSOR} tensor")
        text = data.decode("utf-8")
    return meta, json.loads(text)
