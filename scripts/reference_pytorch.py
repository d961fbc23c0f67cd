"""Reference implementation (PyTorch) of the model in docs/model.md ("SPEC" below), used by
scripts/pytorch_bench.py as the PyTorch baseline goml-dist is benchmarked against, and to
make reference dumps: `python3 scripts/reference_pytorch.py` writes
Tests/Fixtures/tiny_long.safetensors (the other fixtures predate this script's dump code).


Byte-level LLaMA-style pre-norm decoder: LayerNorm with bias, RoPE (half-split
pairing), causal softmax attention, SwiGLU FFN, untied output, no other biases.
Plus the SPEC's AdamW variant, LR schedule, data split and batch sampling.

Kept plain on purpose (nanoGPT-like). Works in float32 (default) or float64
(used to measure fixture tolerances): call `model.to(dtype)`.

attn="plain": explicit masked softmax (used for fixtures; numerics fully visible)
attn="sdpa" : F.scaled_dot_product_attention(is_causal=True) (used for benchmarks)
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab: int = 256
    dim: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 172
    seq_len: int = 64
    norm_eps: float = 1e-5
    rope_base: float = 10000.0

    @property
    def head_dim(self):
        assert self.dim % self.heads == 0, "dim must divide by heads"
        d = self.dim // self.heads
        assert d % 2 == 0, "head size must be even"
        return d

    def to_dict(self):
        return asdict(self)


# ----------------------------------------------------------------------------
# Model

def rope_tables(cfg: Config, T: int, dtype, device=None):
    """cos/sin tables [T, D/2]; theta = p * base^(-2i/D).
    Computed in float64 and rounded once to `dtype`."""
    D = cfg.head_dim
    i = torch.arange(D // 2, dtype=torch.float64)
    inv_freq = cfg.rope_base ** (-2.0 * i / D)
    p = torch.arange(T, dtype=torch.float64)
    theta = p[:, None] * inv_freq[None, :]
    return theta.cos().to(dtype=dtype, device=device), theta.sin().to(dtype=dtype, device=device)


def apply_rope(x, cos, sin):
    """x: [B, H, T, D]; half-split pairing (x[i], x[i+D/2])."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: Config, attn: str):
        super().__init__()
        C = cfg.dim
        self.cfg, self.attn = cfg, attn
        # registration order == SPEC flat order: wq, wk, wv, wo
        self.wq = nn.Linear(C, C, bias=False)
        self.wk = nn.Linear(C, C, bias=False)
        self.wv = nn.Linear(C, C, bias=False)
        self.wo = nn.Linear(C, C, bias=False)

    def forward(self, h, cos, sin):
        B, T, C = h.shape
        H, D = self.cfg.heads, self.cfg.head_dim
        # head k owns channels k*D ..< (k+1)*D
        q = self.wq(h).view(B, T, H, D).transpose(1, 2)  # [B,H,T,D]
        k = self.wk(h).view(B, T, H, D).transpose(1, 2)
        v = self.wv(h).view(B, T, H, D).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.attn == "sdpa":
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = (q @ k.transpose(-2, -1)) / math.sqrt(D)          # [B,H,T,T]
            mask = torch.ones(T, T, dtype=torch.bool, device=h.device).triu(1)  # j > i
            s = s.masked_fill(mask, float("-inf"))
            a = F.softmax(s, dim=-1) @ v
        a = a.transpose(1, 2).contiguous().view(B, T, C)           # concat heads
        return self.wo(a)


class FeedForward(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        C, Fd = cfg.dim, cfg.ffn
        # registration order == SPEC flat order: w1, w2, w3
        self.w1 = nn.Linear(C, Fd, bias=False)
        self.w2 = nn.Linear(Fd, C, bias=False)
        self.w3 = nn.Linear(C, Fd, bias=False)

    def forward(self, h):
        return self.w2(F.silu(self.w1(h)) * self.w3(h))


class Block(nn.Module):
    def __init__(self, cfg: Config, attn: str):
        super().__init__()
        # registration order == SPEC flat order
        self.attention_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attention = Attention(cfg, attn)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attention(self.attention_norm(x), cos, sin)
        x = x + self.feed_forward(self.ffn_norm(x))
        return x


class Transformer(nn.Module):
    def __init__(self, cfg: Config, attn: str = "plain"):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab, cfg.dim)
        self.layers = nn.ModuleList([Block(cfg, attn) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        self._rope = None
        assert [n for n, _ in self.named_parameters()] == spec_param_names(cfg)

    def rope(self, T, dtype, device):
        r = self._rope
        if r is None or r[0].shape[0] < T or r[0].dtype != dtype or r[0].device != device:
            self._rope = rope_tables(self.cfg, max(T, self.cfg.seq_len), dtype, device)
        cos, sin = self._rope
        return cos[:T], sin[:T]

    def forward(self, tokens, targets=None):
        B, T = tokens.shape
        x = self.tok_embeddings(tokens)
        cos, sin = self.rope(T, x.dtype, x.device)
        for blk in self.layers:
            x = blk(x, cos, sin)
        logits = self.output(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


def spec_param_names(cfg: Config):
    names = ["tok_embeddings.weight"]
    for l in range(cfg.layers):
        p = f"layers.{l}."
        names += [p + "attention_norm.weight", p + "attention_norm.bias",
                  p + "attention.wq.weight", p + "attention.wk.weight",
                  p + "attention.wv.weight", p + "attention.wo.weight",
                  p + "ffn_norm.weight", p + "ffn_norm.bias",
                  p + "feed_forward.w1.weight", p + "feed_forward.w2.weight",
                  p + "feed_forward.w3.weight"]
    names += ["norm.weight", "norm.bias", "output.weight"]
    return names


@torch.no_grad()
def init_weights(model: Transformer, generator: torch.Generator, std: float = 0.02,
                 ln_noise: float = 0.0):
    """SPEC default init: matrices and embedding ~ N(0, std), wo/w2 ~ N(0, std/sqrt(2L)),
    LN weights 1, biases 0. ln_noise > 0 (fixtures only) perturbs LN params:
    weight = 1 + ln_noise*N(0,1), bias = ln_noise*N(0,1). Draws in SPEC flat order."""
    L = model.cfg.layers
    for name, p in model.named_parameters():
        if p.dim() == 2:
            s = std / math.sqrt(2 * L) if (name.endswith("wo.weight") or name.endswith("w2.weight")) else std
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype) * s)
        elif name.endswith("weight"):
            p.fill_(1.0)
            if ln_noise:
                p.add_(torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype) * ln_noise)
        else:
            p.zero_()
            if ln_noise:
                p.add_(torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype) * ln_noise)


def count_params(cfg: Config):
    C, Fd, V, L = cfg.dim, cfg.ffn, cfg.vocab, cfg.layers
    per_layer = 4 * C * C + 3 * C * Fd + 4 * C
    total = V * C + L * per_layer + 2 * C + V * C
    matmul = L * (4 * C * C + 3 * C * Fd) + V * C  # weights used in matmuls (embedding is a gather)
    return total, matmul


def flops_per_token(cfg: Config, T: int):
    """Training FLOPs per token (PaLM/nanoGPT convention):
    6 * N_matmul + 12 * L * C * T
    N_matmul = L*(4C^2 + 3CF) + V*C (output head; the embedding gather is not a matmul).
    Attention term = fwd QK^T and AV (2*2*T*C per token per layer) x3 for fwd+bwd,
    counted over the full T x T square (causal halving not credited); LN, RoPE,
    softmax, SiLU and the optimiser are ignored."""
    _, n_mm = count_params(cfg)
    return 6 * n_mm + 12 * cfg.layers * cfg.dim * T


# ----------------------------------------------------------------------------
# Optimiser (SPEC AdamW) and schedule

def lr_at(t, max_lr, min_lr, warmup, total):
    """t is 1-based."""
    if t < warmup:
        return max_lr * t / warmup
    progress = min(1.0, (t - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class SpecAdamW:
    """Exactly the SPEC update, written out elementwise (no fused kernels):
        g  = clip(grad)  (global L2 norm over all params, max `clip`)
        m  = b1 m + (1-b1) g ; v = b2 v + (1-b2) g^2
        p -= lr * ( (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps) + wd * p )
    wd only on 2-D params."""

    def __init__(self, params, b1=0.9, b2=0.95, eps=1e-8, wd=0.1, clip=1.0):
        self.params = list(params)
        self.b1, self.b2, self.eps, self.wd, self.clip = b1, b2, eps, wd, clip
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    @torch.no_grad()
    def grad_norm(self):
        return torch.sqrt(sum((p.grad * p.grad).sum() for p in self.params))

    @torch.no_grad()
    def step(self, lr):
        self.t += 1
        t, b1, b2 = self.t, self.b1, self.b2
        norm = self.grad_norm()
        scale = (self.clip / norm) if norm.item() > self.clip else torch.ones_like(norm)
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad * scale
            m.mul_(b1).add_((1 - b1) * g)
            v.mul_(b2).add_((1 - b2) * g * g)
            mhat = m / (1 - b1 ** t)
            vhat = v / (1 - b2 ** t)
            wd = self.wd if p.dim() == 2 else 0.0
            p.sub_(lr * (mhat / (torch.sqrt(vhat) + self.eps) + wd * p))
        return norm


def torch_adamw(model, lr, b1=0.9, b2=0.95, eps=1e-8, wd=0.1, fused=None):
    """What a PyTorch user writes: torch.optim.AdamW with decay only on 2-D params.
    Same maths as SpecAdamW (torch applies p *= 1 - lr*wd first, which is identical)."""
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() != 2]
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {} if fused is None else {"fused": fused}
    return torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=eps, **kw)


# ----------------------------------------------------------------------------
# Data

def load_bytes(path):
    """Text file -> bytes -> tokens; first floor(0.9*N) train, rest validation."""
    with open(path, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).to(torch.long)
    n = int(0.9 * len(data))
    return data[:n], data[n:]


class BatchSampler:
    """Global batch of B sequences of T+1 tokens per step. Start offsets in
    [0, len(train)-T-1] drawn by one torch.Generator(seed) that every rank runs
    identically; rank r of W takes rows r*B/W ..< (r+1)*B/W."""

    def __init__(self, data, B, T, seed=1337, rank=0, world=1):
        if B % world:
            raise ValueError(f"global batch B={B} must divide by world size W={world}")
        self.data, self.B, self.T, self.rank, self.world = data, B, T, rank, world
        self.g = torch.Generator().manual_seed(seed)

    def next(self):
        B, T = self.B, self.T
        ix = torch.randint(len(self.data) - T, (B,), generator=self.g)  # same on every rank
        per = B // self.world
        ix = ix[self.rank * per:(self.rank + 1) * per]
        x = torch.stack([self.data[i:i + T] for i in ix.tolist()])
        y = torch.stack([self.data[i + 1:i + 1 + T] for i in ix.tolist()])
        return x, y


def val_offsets(n_val, T, count):
    """`count` evenly spaced start offsets over the validation split:
    off_k = floor(k * (n_val - T - 1) / (count - 1)), k = 0..count-1 (integer maths)."""
    span = n_val - T - 1
    return [(k * span) // (count - 1) for k in range(count)]


@torch.no_grad()
def eval_loss(model, val, T, B, nbatches):
    """Mean loss over `nbatches` fixed batches of B sequences (the val_offsets set)."""
    offs = val_offsets(len(val), T, B * nbatches)
    tot = 0.0
    for b in range(nbatches):
        o = offs[b * B:(b + 1) * B]
        x = torch.stack([val[i:i + T] for i in o])
        y = torch.stack([val[i + 1:i + 1 + T] for i in o])
        _, loss = model(x, y)
        tot += loss.item()
    return tot / nbatches


# ----------------------------------------------------------------------------
# Reference dumps (Tests/Fixtures/README.md layout)

def write_safetensors(path, tensors, metadata):
    """Minimal safetensors writer: F32/I32 tensors, little-endian, header padded to 8 bytes."""
    import json, struct
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        dtype = {torch.float32: "F32", torch.int32: "I32"}[t.dtype]
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def reference_run(model, x, y, dtype, lr=1e-3):
    """Forward, backward, two SPEC AdamW steps on one batch, in `dtype`: the dump's quantities."""
    model = model.to(dtype)
    names = spec_param_names(model.cfg)
    out = {"init." + n: p.detach().clone() for n, p in model.named_parameters()}
    opt = SpecAdamW(model.parameters())
    logits, loss = model(x, y)
    loss.backward()
    out["logits"], out["loss"] = logits.detach(), loss.detach().reshape(1)
    out.update({"grad." + n: p.grad.detach().clone() for n, p in model.named_parameters()})
    out["grad_norm"] = opt.step(lr).reshape(1)
    out.update({"step1." + n: p.detach().clone() for n, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    _, loss2 = model(x, y)
    loss2.backward()
    out["step2_loss"] = loss2.detach().reshape(1)
    out["step2_grad_norm"] = opt.step(lr).reshape(1)
    out.update({"step2." + n: p.detach().clone() for n, p in model.named_parameters()})
    assert [n for n, _ in model.named_parameters()] == names
    return out


def make_fixture(path, cfg, batch, seed, note):
    """A reference dump at the SPEC default init: float32, one thread, plain masked-softmax
    attention. Prints the float32 dump's worst errors against the same run in float64 from the
    same float32 initial values (the measures of Tests/Fixtures/README.md's tolerance table)."""
    import copy, json
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(seed)
    model = Transformer(cfg, attn="plain")
    init_weights(model, generator)
    data = torch.randint(cfg.vocab, (batch, cfg.seq_len + 1), generator=generator)
    x, y = data[:, :-1], data[:, 1:]
    wide = reference_run(copy.deepcopy(model), x, y, torch.float64)
    dump = reference_run(model, x, y, torch.float32)
    L = cfg.layers
    metadata = {
        "config": json.dumps({**cfg.to_dict(), "head_dim": cfg.head_dim, "batch": batch}),
        "generator": f"torch {torch.__version__}, float32, 1 thread, plain masked-softmax attention",
        "init": json.dumps({"std": 0.02, "wo_w2_std": 0.02 / math.sqrt(2 * L), "layernorm": "weight=1, bias=0",
                            "torch_generator_seed": seed}),
        "layout": "init.<name>, tokens[B,T] i32, targets[B,T] i32, logits[B,T,V], loss[1], grad.<name>, "
                  "grad_norm[1] (pre-clip), step1.<name>, step2_loss[1], step2_grad_norm[1], step2.<name>",
        "note": note,
        "optimizer": json.dumps({"b1": 0.9, "b2": 0.95, "eps": 1e-08, "wd": 0.1, "clip": 1.0, "lr_step1": 0.001,
                                 "lr_step2": 0.001, "weight_decay_on": "2-D params only (embedding, matrices)"}),
        "param_order": json.dumps(spec_param_names(cfg)),
    }
    write_safetensors(path, {**dump, "tokens": x.to(torch.int32), "targets": y.to(torch.int32)}, metadata)

    def worst(prefix, measure):
        return max(measure(dump[k].double(), wide[k]) for k in dump if k.startswith(prefix))
    scaled = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()
    relative = lambda a, b: ((a - b).abs() / b.abs()).max().item()
    absolute = lambda a, b: (a - b).abs().max().item()
    print(f"{path}: float32 vs float64: logits {scaled(dump['logits'].double(), wide['logits']):.1e} of max |logit|, "
          f"loss {max(worst('loss', relative), worst('step2_loss', relative)):.1e} rel, "
          f"grad norm {max(worst('grad_norm', relative), worst('step2_grad_norm', relative)):.1e} rel, "
          f"gradients {worst('grad.', scaled):.1e} of max |element|, "
          f"parameters {max(worst('step1.', absolute), worst('step2.', absolute)):.1e} abs")


if __name__ == "__main__":
    # The long-sequence fixture: T 161 is odd and spans 1.26 of goml-dist's 128-row attention
    # blocks (a full off-diagonal block, two diagonal ones, one partial). The note is the one
    # the stored file carries, written when the blocks had 64 rows.
    import sys
    out = sys.argv[1] if len(sys.argv) > 1 else "Tests/Fixtures/tiny_long.safetensors"
    make_fixture(out, Config(vocab=64, dim=32, layers=1, heads=4, ffn=64, seq_len=161), batch=2, seed=2024,
                 note="T 161: odd, longer than two 64-row attention blocks; vocab 64 keeps the file small")
