"""The anchors' PyTorch measurement, re-run on this machine so goml-dist is compared on the
same CPU: the model of docs/model.md in plain PyTorch (scripts/reference_pytorch.py) (sdpa attention,
torch.optim.AdamW with decay on 2-D params, clip_grad_norm_(1.0)). A step = sample batch +
forward + backward + clip + AdamW + loss.item(); 3 warm-up steps; median over the rest.

    python3 scripts/pytorch_bench.py --config small --threads 2 --steps 10
    python3 scripts/pytorch_bench.py --config small --threads 2 --steps 10 --autocast   # bf16 autocast
    python3 scripts/pytorch_bench.py --config base --batch 2 --threads 2 --steps 3
    python3 scripts/pytorch_bench.py --time-to-quality      # nano recipe, 2,000 steps
Needs torch (pip install torch); not part of the product or its tests.
"""
import argparse, json, os, statistics, sys, time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import torch  # noqa: E402
from reference_pytorch import (Config, Transformer, init_weights, torch_adamw, BatchSampler,  # noqa: E402
                               load_bytes, eval_loss, lr_at, flops_per_token)

PRESETS = {"tiny": (Config(dim=64, layers=2, heads=4, ffn=172, seq_len=64), 8),
           "nano": (Config(dim=128, layers=4, heads=4, ffn=344, seq_len=64), 12),
           "small": (Config(dim=384, layers=6, heads=6, ffn=1024, seq_len=256), 8),
           "base": (Config(dim=768, layers=12, heads=12, ffn=2048, seq_len=1024), 2)}
DATA = os.path.join(here, "..", "data", "tinyshakespeare.txt")


def train_step(model, opt, sampler, autocast=False):
    """What the anchors time: sample + forward + backward + clip + AdamW + loss.item().
    With autocast, the forward runs under torch.autocast("cpu", torch.bfloat16) (PyTorch AMP:
    bf16 matrix products, float32 master weights and optimiser)."""
    x, y = sampler.next()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        _, loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def bench(name, threads, steps, autocast=False, batch=None):
    torch.set_num_threads(threads)
    cfg, B = PRESETS[name]
    B = batch or B
    torch.manual_seed(0)
    model = Transformer(cfg, attn="sdpa")
    init_weights(model, torch.Generator().manual_seed(0))
    opt = torch_adamw(model, 1e-3)
    train, _ = load_bytes(DATA)
    sampler = BatchSampler(train, B, cfg.seq_len)
    times = []
    for i in range(3 + steps):
        t = time.perf_counter()
        train_step(model, opt, sampler, autocast)
        if i >= 3:
            times.append(time.perf_counter() - t)
    ms = statistics.median(times) * 1000
    tok = B * cfg.seq_len / (ms / 1000)
    print(json.dumps({"config": name, "batch": B, "threads": threads, "torch": torch.__version__, "autocast_bf16": autocast, "ms_per_step": round(ms, 2),
                      "tokens_per_s": round(tok), "model_gflops": round(tok * flops_per_token(cfg, cfg.seq_len) / 1e9, 1)}))


def time_to_quality():
    torch.set_num_threads(2)
    cfg, B = PRESETS["nano"]
    model = Transformer(cfg, attn="sdpa")
    init_weights(model, torch.Generator().manual_seed(1337))
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.dim() == 2], "weight_decay": 0.1},
                             {"params": [p for p in model.parameters() if p.dim() != 2], "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
    train, val = load_bytes(DATA)
    sampler = BatchSampler(train, B, cfg.seq_len, seed=1337)
    seconds = 0.0
    for step in range(1, 2001):
        t = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, 1e-3, 1e-4, 100, 2000)
        train_step(model, opt, sampler)
        seconds += time.perf_counter() - t
        if step % 250 == 0:
            model.eval()
            v = eval_loss(model, val, cfg.seq_len, B, 50)
            model.train()
            print(json.dumps({"step": step, "val_loss": round(v, 4), "train_s": round(seconds, 2)}), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="nano")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, help="global batch (default: the preset's)")
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast (torch.autocast on the CPU)")
    ap.add_argument("--time-to-quality", action="store_true")
    a = ap.parse_args()
    time_to_quality() if a.time_to_quality else bench(a.config, a.threads, a.steps, a.autocast, a.batch)
