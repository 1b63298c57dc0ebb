"""Times `bst_torch.BST` as `bst-train bench` times bst, and prints ONE JSON object:
training samples/s, inference samples/s, scoring latency of 1,000 candidates for one user
(median and p99, the `.cpu()` copy included) and peak memory: on CUDA the device's
(`torch.cuda.max_memory_allocated` over the run), on the CPU the peak of live allocated
bytes during one training step, measured with the profiler (`step_peak_bytes`). Eager
fp32, on CUDA if available.

    python3 bench_torch.py --from-bst bst.json     # the config, vocab sizes, batch and
                                                   # step counts of a `bst-train bench` run
    python3 bench_torch.py --batch 256 --steps 50  # the default model, synthetic vocab sizes

The data are random ids with the vocabularies' sizes (a few padded history slots per
sample), generated before timing; each step copies its batch to the device, as bst
uploads its batch every step.
"""

import argparse
import json
import math
import sys
import time

import torch

from bst_torch import BST, DEFAULT_CONFIG, make_optimizer, vocab_sizes

# The synthetic data's vocabularies (what `bst-train bench` reports for its default data).
DEFAULT_VOCAB = {"items": 241, "cats": 13, "other": 6042, "field_sizes": [6001, 7, 3, 24, 7]}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--from-bst", help="JSON printed by `bst-train bench`: take its config, vocab sizes, batch and counts")
    p.add_argument("--config-json", help="a model config as JSON (the keys of bst's [model] table)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--batch", type=int)
    p.add_argument("--eval-batch", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--candidates", type=int)
    p.add_argument("--max-seconds", type=float, default=5.0,
                   help="stop repeating a measurement after this long (at least 3 runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    return p.parse_args()


def settings(args):
    """The model config, vocab sizes and counts: --from-bst, then flags, then defaults."""
    s = {"model": dict(DEFAULT_CONFIG), "vocab": dict(DEFAULT_VOCAB), "batch": 256,
         "eval_batch": 1024, "steps": 50, "warmup": 5, "candidates": 1000,
         "optimizer": "adam", "lr": None, "emb_lr_scale": None}
    if args.from_bst:
        with open(args.from_bst) as f:
            r = json.load(f)
        c = r["config"]
        s["model"].update(c["model"])
        s["vocab"] = c["vocab"]
        s.update(batch=c["batch"], eval_batch=c["eval_batch"], optimizer=c["optimizer"],
                 lr=c["lr"], emb_lr_scale=c.get("emb_lr_scale"), steps=r["train"]["steps"], warmup=r["train"]["warmup_steps"],
                 candidates=r["scoring"]["candidates"])
    if args.config_json:
        with open(args.config_json) as f:
            s["model"].update(json.load(f))
    for key in ["batch", "eval_batch", "steps", "warmup", "candidates"]:
        value = getattr(args, key)
        if value is not None:
            s[key] = value
    return s


def random_batch(s, n, gen):
    """n samples of random ids (CPU tensors): sample i pads its first i % (L/2 + 1)
    history slots; other features are drawn within each field's rows."""
    m = s["model"]
    items, cats, _, _ = vocab_sizes(s["vocab"])
    l, p = m["seq_len"], m["pos_buckets"]

    def ids(high, shape):
        return torch.randint(1, max(high, 2), shape, generator=gen)

    pad = torch.arange(l)[None, :] < (torch.arange(n) % (l // 2 + 1))[:, None]
    hist = [ids(high, (n, l)).masked_fill(pad, 0) for high in (items, cats, p)]
    other, offset = [], 0
    for size in s["vocab"]["field_sizes"]:
        other.append(offset + torch.randint(0, max(size, 1), (n, 1), generator=gen))
        offset += size
    return {
        "hist_item": hist[0], "hist_cat": hist[1], "hist_pos": hist[2],
        "target_item": ids(items, (n,)), "target_cat": ids(cats, (n,)),
        "other": torch.cat(other, dim=1),
        "label": torch.randint(0, 2, (n,), generator=gen).float(),
    }


def one_user(batch, n, items):
    """n candidates for the first sample's user: its history and features, targets 1.."""
    b = {k: v[:1].repeat(n, *([1] * (v.dim() - 1))) for k, v in batch.items()}
    b["target_item"] = 1 + torch.arange(n) % max(items - 1, 1)
    return b


def to(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def inputs(b):
    return (b["hist_item"], b["hist_cat"], b["hist_pos"], b["target_item"], b["target_cat"], b["other"])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def repeat(runs, max_seconds, f):
    """f() once untimed, then up to `runs` timed calls (at least 3) until max_seconds."""
    f()
    times, start = [], time.perf_counter()
    while len(times) < max(runs, 1) and (len(times) < 3 or time.perf_counter() - start < max_seconds):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return times


def autograd_bytes(model, opt, x):
    """What one training step must hold, on any device: the bytes of the tensors autograd
    saves for the backward (distinct storages, found with saved_tensors_hooks), and of the
    parameters, their gradients and the optimiser state. Their sum is a lower bound of the
    step's peak memory (transient tensors of the forward and backward come on top)."""
    storages = {}
    params = list(model.parameters())
    param_storages = {p.untyped_storage().data_ptr() for p in params}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in param_storages:  # weights are counted below
            storages[(st.data_ptr(), t.device)] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.loss(model(*inputs(x)), x["label"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    state = [v for st in opt.state.values() for v in st.values()
             if torch.is_tensor(v) and v.dim() > 0]
    return {"saved_for_backward_bytes": sum(storages.values()),
            "params_grads_optim_bytes": nbytes(params) + nbytes(p.grad for p in params
                                                                if p.grad is not None)
            + nbytes(state),
            "method": "one training step: distinct storages autograd saves for the backward "
                      "(saved_tensors_hooks), plus parameters, gradients and optimiser state"}


def step_peak_bytes(s, device, batch, seed):
    """Measured peak of live allocated bytes during one training step (the input copy,
    forward, loss, zero_grad(set_to_none=True), backward, Adam step), everything counted:
    parameters, gradients, optimiser state, inputs, activations and temporaries.

    torch.profiler(profile_memory=True) reports every allocation and free of the device's
    allocator with its byte count, but not the free of a block allocated before profiling
    began. So the model and optimiser are built afresh inside the profile, one warm-up step
    creates the gradients and Adam state, and the measured step (the record_function range
    below) starts with parameters, gradients and Adam state live, as a step in a training
    loop does. Sorted by time, the running sum of the memory events is the bytes live from
    this profile; its maximum within the measured step is the peak. The inputs are cloned
    in each step, as the CUDA path uploads its batch."""
    from torch.profiler import ProfilerActivity, profile, record_function

    phases = ["bst_phase_input", "bst_phase_forward_loss", "bst_phase_zero_grad",
              "bst_phase_backward", "bst_phase_optimizer"]

    def train_step(model, opt):
        with record_function(phases[0]):
            x = {k: v.clone() for k, v in batch.items()} if device.type == "cpu" else to(batch, device)
        with record_function(phases[1]):
            loss = model.loss(model(*inputs(x)), x["label"])
        with record_function(phases[2]):
            opt.zero_grad(set_to_none=True)
        with record_function(phases[3]):
            loss.backward()
        with record_function(phases[4]):
            opt.step()
        del x, loss
        sync(device)

    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model = BST(s["model"], s["vocab"]).to(device)
            opt = make_optimizer(model, s["optimizer"], s["lr"],
                                 emb_lr_scale=s["emb_lr_scale"])
            model.train()
            train_step(model, opt)  # creates the gradients and the optimiser state
            params = list(model.parameters())
            state = [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]
            expected_start = (nbytes(params) + nbytes(model.buffers())
                              + nbytes(p.grad for p in params if p.grad is not None) + nbytes(state))
            with record_function("bst_measured_step"):
                train_step(model, opt)
    events = list(prof.profiler.kineto_results.events())
    window = [(e.start_ns(), e.end_ns()) for e in events if e.name() == "bst_measured_step"]
    assert len(window) == 1, window
    t0, t1 = window[0]
    kind = "CPU" if device.type == "cpu" else "CUDA"
    mem = sorted((e.start_ns(), i, e.nbytes()) for i, e in enumerate(events)
                 if e.name() == "[memory]" and e.device_type().name == kind)
    live, start, peak, peak_at = 0, None, None, None
    for t, _, n in mem:
        if t > t1:
            break
        if t >= t0 and start is None:
            start = peak = live
        live += n
        if t >= t0 and live > peak:
            peak, peak_at = live, t
    ranges = [(e.name()[len("bst_phase_"):], e.start_ns(), e.end_ns()) for e in events
              if e.name() in phases and t0 <= e.start_ns() <= t1]
    peak_phase = next((name for name, a, b in ranges if peak_at is not None and a <= peak_at <= b),
                      None)
    return {"peak_host_bytes_one_step" if device.type == "cpu" else "peak_device_bytes_one_step": peak,
            "peak_phase": peak_phase,
            "live_at_step_start_bytes": start,
            "params_grads_optim_bytes": expected_start,
            "live_at_step_end_bytes": live,
            "method": "torch.profiler(profile_memory=True): maximum of the time-sorted running sum "
                      "of the allocator's memory events within one training step (batch copy, "
                      "forward, loss, zero_grad(set_to_none=True), backward, optimiser step) of a "
                      "model and optimiser built inside the profile, after one warm-up step there; "
                      "counts parameters, gradients, optimiser state, inputs, activations and "
                      "temporaries (requested sizes, no allocator rounding)"}


def main():
    args = parse_args()
    s = settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    model = BST(s["model"], s["vocab"]).to(device)
    opt = make_optimizer(model, s["optimizer"], s["lr"],
                                 emb_lr_scale=s["emb_lr_scale"])
    b = s["batch"]
    pool = [random_batch(s, b, gen) for _ in range(8)]
    if device.type == "cuda":
        pool = [{k: v.pin_memory() for k, v in x.items()} for x in pool]

    # Training: the loss read every 10 steps, as bst's GPU backend reads it.
    def step(i):
        x = to(pool[i % len(pool)], device)
        loss = model.loss(model(*inputs(x)), x["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    model.train()
    for i in range(s["warmup"]):
        step(i).item()
    sync(device)
    losses = []
    start = time.perf_counter()
    for i in range(1, s["steps"] + 1):
        loss = step(i)
        if i % 10 == 0 or i == s["steps"]:
            losses.append(loss.item())
    sync(device)
    train_seconds = time.perf_counter() - start

    autograd = autograd_bytes(model, opt, to(pool[0], device))

    model.eval()
    e = s["eval_batch"]
    eval_batch = to(random_batch(s, e, gen), device)
    items = vocab_sizes(s["vocab"])[0]
    candidates = to(one_user(random_batch(s, 1, gen), s["candidates"], items), device)

    def predict(x):
        with torch.no_grad():
            return torch.sigmoid(model(*inputs(x))).cpu()  # the copy waits for the device

    inf = repeat(args.runs, args.max_seconds, lambda: predict(eval_batch))
    ms = sorted(1e3 * t for t in repeat(args.runs, args.max_seconds, lambda: predict(candidates)))

    def rank(p):  # nearest rank: the smallest time at least p of the runs do not exceed
        return ms[min(max(math.ceil(p * len(ms)), 1), len(ms)) - 1]

    if device.type == "cuda":
        adapter = {"name": torch.cuda.get_device_name(device), "backend": "cuda",
                   "device_type": "gpu"}
        memory = {"peak_device_bytes": torch.cuda.max_memory_allocated(device),
                  "method": "torch.cuda.max_memory_allocated over the whole run"}
    else:
        adapter = "cpu"
        memory = step_peak_bytes(s, device, pool[0], args.seed)
    report = {
        "adapter": adapter,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": {"model": s["model"], "batch": b, "eval_batch": e, "optimizer": s["optimizer"],
                   "vocab": s["vocab"],
                   "params": sum(p.numel() for p in model.parameters())},
        "train": {"samples_per_sec": s["steps"] * b / train_seconds, "batch": b,
                  "steps": s["steps"], "warmup_steps": s["warmup"], "seconds": train_seconds,
                  "loss_read_every": 10, "mean_loss": sum(losses) / len(losses)},
        "inference": {"samples_per_sec": e * len(inf) / sum(inf), "batch": e, "runs": len(inf),
                      "seconds": sum(inf)},
        "scoring": {"candidates": s["candidates"], "runs": len(ms), "median_ms": rank(0.5),
                    "p99_ms": rank(0.99), "min_ms": ms[0], "mean_ms": sum(ms) / len(ms),
                    "includes_readback": True},
        "memory": memory,
        "autograd": autograd,
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
