"""bst against PyTorch: prints both runs' numbers and the ratio bst / torch of each.

    python3 benches/ratios.py BST_JSON TORCH_JSON

BST_JSON is what `bst-train bench` printed, TORCH_JSON what benches/pytorch/bench_torch.py
printed for the same config (benches/compare.sh and scripts/device-run.sh run both).
"""
import json, sys

bst, torch = (json.load(open(p)) for p in sys.argv[1:3])

def name(r):
    a = r["adapter"]
    return "cpu" if a == "cpu" else a["name"]

print(f"bst:   {name(bst)}")
print(f"torch: {name(torch)} (torch {torch['torch']}, {torch['threads']} threads)")
if (bst["adapter"] == "cpu") != (torch["adapter"] == "cpu"):
    print("warning: bst and torch ran on different kinds of device; the ratios compare those")
c = bst["config"]
print(f"config: batch {c['batch']}, eval batch {c['eval_batch']}, {c['params']} parameters "
      f"(torch {torch['config']['params']}), {bst['scoring']['candidates']} candidates\n")

def get(r, path):
    for k in path.split("."):
        r = r.get(k) if isinstance(r, dict) else None
    return r

rows = [
    ("training samples/s", "train.samples_per_sec", "higher is better"),
    ("inference samples/s", "inference.samples_per_sec", "higher is better"),
    ("scoring median ms", "scoring.median_ms", "lower is better"),
    ("scoring p99 ms", "scoring.p99_ms", "lower is better"),
    ("peak device memory MiB", "memory.peak_device_bytes", "lower is better"),
]
print(f"{'':24} {'bst':>12} {'torch':>12} {'bst/torch':>10}")
host_peak = None
for label, path, better in rows:
    b, t = get(bst, path), get(torch, path)
    if path == "memory.peak_device_bytes" and t is None:
        # torch on the CPU: the measured peak of one training step's live bytes instead
        t = get(torch, "memory.peak_host_bytes_one_step")
        if t is not None and b is not None:
            label, host_peak = "peak memory MiB *", t
    if b is None or t is None or t == 0:
        print(f"{label:24} {'-':>12} {'-':>12} {'-':>10}  (not measured on the CPU)")
        continue
    scale = 1 / 2**20 if path.startswith("memory") else 1
    print(f"{label:24} {b * scale:12.2f} {t * scale:12.2f} {b / t:10.3f}  ({better})")
ps = get(bst, "scoring.per_sample_median_ms")
if ps is not None and get(torch, "scoring.median_ms"):
    once = "each history once" if get(bst, "scoring.history_once") else "one sample per candidate"
    print(f"  bst scoring: {once}; one sample per candidate it takes {ps:.2f} ms "
          f"({ps / get(torch, 'scoring.median_ms'):.3f} of torch's)")
if host_peak is not None:
    print(f"  * torch's is the peak of live host bytes in one training step on the CPU "
          f"({torch['memory'].get('peak_phase')} phase, torch.profiler memory events), not a "
          f"CUDA figure: about the tensors CUDA would hold, without its 512-byte rounding, "
          f"cuBLAS workspace or CUDA-specific kernels' temporaries")
a = torch.get("autograd")
if a:
    print(f"  torch autograd lower bound (saved for backward + params, grads, Adam state): "
          f"{(a['saved_for_backward_bytes'] + a['params_grads_optim_bytes']) / 2**20:.2f} MiB")

k = bst.get("kernels")
if k and k.get("results"):
    print(f"\nbst kernels at batch {k['batch']} ({k['timer']}):")
    print(f"{'':34} {'ms':>9} {'GFLOP/s':>10} {'GB/s':>9}")
    for r in k["results"]:
        rate = lambda v: f"{v:.1f}" if v is not None else "-"
        print(f"{r['name']:34} {r['ms']:9.4f} {rate(r['gflop_per_s']):>10} {rate(r['gb_per_s']):>9}")
