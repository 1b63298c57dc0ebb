"""BST in PyTorch: the model of spec section 2, with the parameter names of section 3.

A `bst` checkpoint loads into it with `load_state_dict` (see `load_bst_checkpoint`), and
`bench_torch.py` times it against `bst-train bench`. Needs `torch` (and `safetensors`
to load a checkpoint).

    cfg   = {"seq_len": 20, "d_item": 32, ..., "mlp": [1024, 512, 256]}   # bst.config
    vocab = {"items": 241, "cats": 13, "other": 6042, "field_sizes": [...]} # or bst.vocab
    model = BST(cfg, vocab)
    logit = model(hist_item, hist_cat, hist_pos, target_item, target_cat, other)

Batch tensors (int64, B samples): hist_item, hist_cat, hist_pos (B, L), right-aligned with
0 in padded slots; target_item, target_cat (B); other (B, F), rows of the stacked
other-feature table. A token is valid when its item is not 0; the target always is.
"""

import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_CONFIG = {
    "seq_len": 20,
    "d_item": 32,
    "d_cat": 16,
    "d_pos": 16,
    "pos_buckets": 64,
    "heads": 8,
    "d_ff": 256,
    "blocks": 1,
    "d_other": 16,
    "mlp": [1024, 512, 256],
    "pooling": "target",
    "dropout": 0.2,
    "leaky_alpha": 0.01,
    "emb_init_std": 1e-4,
}


def vocab_sizes(vocab):
    """(items, cats, other rows, fields) from `bst-train bench`'s config.vocab, or from a
    checkpoint's bst.vocab metadata (item_ids, cat_names, fields)."""
    if "item_ids" in vocab:
        sizes = [f["size"] for f in vocab["fields"]]
        return len(vocab["item_ids"]), len(vocab["cat_names"]), sum(sizes), len(sizes)
    sizes = vocab["field_sizes"]
    return vocab["items"], vocab["cats"], vocab["other"], len(sizes)


class Block(nn.Module):
    """Post-LayerNorm transformer block: attention, then the FFN, each added to its input
    through dropout and normalised."""

    def __init__(self, d, heads, d_ff, dropout, alpha):
        super().__init__()
        self.heads = heads
        self.alpha = alpha
        self.qkv = nn.Linear(d, 3 * d)  # rows 0..d Q, d..2d K, 2d..3d V
        self.out = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d, eps=1e-5)
        self.ffn1 = nn.Linear(d, d_ff)
        self.ffn2 = nn.Linear(d_ff, d)
        self.ln2 = nn.LayerNorm(d, eps=1e-5)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, valid):
        # x (B, T, d); valid (B, T) bool, masks invalid tokens as keys.
        b, t, d = x.shape
        h, dh = self.heads, d // self.heads
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, h, dh).transpose(1, 2) for z in (q, k, v))  # (B, h, T, dh)
        scores = q @ k.transpose(-2, -1) / math.sqrt(dh)  # (B, h, T, T)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        att = scores.softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x1 = self.ln1(x + self.drop(self.out(y)))
        f = self.ffn2(F.leaky_relu(self.ffn1(x1), self.alpha))
        return self.ln2(x1 + self.drop(f))


class BST(nn.Module):
    """Embeddings (item, category, time-gap position), `blocks` transformer blocks,
    pooling (target, mean or flatten), the other-feature embeddings, and the MLP head
    with LeakyReLU between its layers. `forward` returns the logit (B,)."""

    def __init__(self, cfg, vocab):
        super().__init__()
        c = dict(DEFAULT_CONFIG, **cfg)
        items, cats, other, fields = vocab_sizes(vocab)
        d = c["d_item"] + c["d_cat"] + c["d_pos"]
        t = c["seq_len"] + 1
        self.cfg, self.d, self.t, self.fields = c, d, t, fields
        self.alpha = c["leaky_alpha"]
        # The spec's initialisation: embeddings N(0, emb_init_std) (set below; nn.Embedding's
        # own default is N(0, 1)), nn.Linear U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and
        # nn.LayerNorm weight 1, bias 0 (PyTorch's defaults).
        self.emb = nn.ModuleDict(
            {
                "item": nn.Embedding(items, c["d_item"]),
                "cat": nn.Embedding(cats, c["d_cat"]),
                "pos": nn.Embedding(c["pos_buckets"], c["d_pos"]),
                "other": nn.Embedding(other, c["d_other"]),
            }
        )
        for table in self.emb.values():
            nn.init.normal_(table.weight, mean=0.0, std=c["emb_init_std"])
        self.blocks = nn.ModuleList(
            Block(d, c["heads"], c["d_ff"], c["dropout"], self.alpha)
            for _ in range(c["blocks"])
        )
        pooled = {"target": d, "mean": 2 * d, "flatten": t * d}[c["pooling"]]
        widths = [pooled + fields * c["d_other"]] + list(c["mlp"]) + [1]
        self.mlp = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip(widths[:-1], widths[1:])
        )

    def forward(self, hist_item, hist_cat, hist_pos, target_item, target_cat, other):
        b = hist_item.shape[0]
        zero = torch.zeros_like(target_item)
        items = torch.cat([hist_item, target_item[:, None]], dim=1)  # (B, T), target last
        cats = torch.cat([hist_cat, target_cat[:, None]], dim=1)
        pos = torch.cat([hist_pos, zero[:, None]], dim=1)  # the target's bucket is 0
        x = torch.cat(
            [self.emb["item"](items), self.emb["cat"](cats), self.emb["pos"](pos)], dim=-1
        )  # (B, T, d)
        valid = items != 0
        valid[:, -1] = True
        for block in self.blocks:
            x = block(x, valid)
        x = x * valid[..., None]  # zero invalid tokens before pooling
        pooling = self.cfg["pooling"]
        if pooling == "target":
            pooled = x[:, -1]
        elif pooling == "mean":
            n = valid[:, :-1].sum(dim=1, keepdim=True).clamp(min=1)
            pooled = torch.cat([x[:, -1], x[:, :-1].sum(dim=1) / n], dim=-1)
        else:  # flatten
            pooled = x.reshape(b, -1)
        z = torch.cat([pooled, self.emb["other"](other).reshape(b, -1)], dim=-1)
        for layer in self.mlp[:-1]:
            z = F.leaky_relu(layer(z), self.alpha)
        return self.mlp[-1](z).squeeze(-1)

    def loss(self, logit, label):
        """Mean binary cross-entropy, from the logit (the stable form)."""
        return F.binary_cross_entropy_with_logits(logit, label)


# bst's Adam defaults (`train.lr`, `train.emb_lr_scale`; the README's "Model quality"
# study): the blocks and the MLP at 5e-4, the embedding tables 60 times faster (3e-2).
ADAM_LR = 5e-4
ADAM_EMB_LR_SCALE = 60.0


def make_optimizer(
    model, optimizer="adam", lr=None, emb_l2=0.0, weight_decay=0.0, emb_lr_scale=None
):
    """Adam (betas 0.9/0.999, eps 1e-8) or Adagrad (lr 0.01, eps 1e-10), in two parameter
    groups as bst trains them: the embedding tables (lr * emb_lr_scale, L2 `emb_l2` as
    coupled weight decay: `model.emb_l2`, `train.emb_lr_scale`) and the rest (lr,
    `train.weight_decay`). `None` takes bst's defaults: Adam lr 5e-4 with the tables at
    60x, Adagrad lr 0.01 with the tables at 1x. bst's `train.lr_decay` is `lr_at` per
    epoch: set each group's `lr` to `lr_at(...) * (its scale)`."""
    tables = list(model.emb.parameters())
    ids = {id(p) for p in tables}
    rest = [p for p in model.parameters() if id(p) not in ids]
    if optimizer == "adagrad":
        lr = lr or 1e-2
        scale = 1.0 if emb_lr_scale is None else emb_lr_scale
        groups = [
            {"params": tables, "lr": lr * scale, "weight_decay": emb_l2},
            {"params": rest, "lr": lr, "weight_decay": weight_decay},
        ]
        return torch.optim.Adagrad(groups, lr=lr, eps=1e-10)
    lr = lr or ADAM_LR
    scale = ADAM_EMB_LR_SCALE if emb_lr_scale is None else emb_lr_scale
    groups = [
        {"params": tables, "lr": lr * scale, "weight_decay": emb_l2},
        {"params": rest, "lr": lr, "weight_decay": weight_decay},
    ]
    return torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def lr_at(lr, lr_decay, epoch):
    """bst's `train.lr_decay` schedule: the learning rate of 1-based `epoch`."""
    return lr * lr_decay ** (epoch - 1)


def load_bst_checkpoint(path):
    """A BST with the parameters of a bst checkpoint (best.safetensors or
    checkpoint.safetensors), and the checkpoint's config and vocabulary. The vocabulary
    may be the metadata `bst.vocab` or, for large ones, the tensor `meta.vocab`
    (spec section 3); tensors that are not weights (`meta.`, `optim.`, `best.`) are
    skipped."""
    from safetensors.torch import load_file

    from bst_checkpoint import is_weight, read_metadata

    meta, vocab = read_metadata(path)
    cfg = json.loads(meta["bst.config"])
    model = BST(cfg, vocab)
    state = load_file(path)
    model.load_state_dict({k: v for k, v in state.items() if is_weight(k)})
    return model, cfg, vocab
