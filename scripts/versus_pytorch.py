"""BENCHMARKS.md's first table: every preset, goml-dist (its default precision, fp32 and, with
AVX-512, bf16) against PyTorch's best of fp32 eager and bf16 autocast (scripts/pytorch_bench.py), 1 process ×
2 threads, each preset's batch, the commands alternating in rounds on one CPU. Prints the
table in Markdown with the CPU named. Run through `launch/bench --versus-pytorch`, which builds
goml-dist and makes the Python environment with torch.

    python3 scripts/versus_pytorch.py BIN [--rounds 2] [--presets tiny,nano,small,base]
"""
import argparse, json, os, subprocess, sys

here = os.path.dirname(os.path.abspath(__file__))
STEPS = {"tiny": 30, "nano": 30, "small": 8, "base": 3}


def cpu_name():
    fields = {}
    for line in open("/proc/cpuinfo"):
        if ":" in line:
            k, v = (s.strip() for s in line.split(":", 1))
            fields.setdefault(k, v)
        if not line.strip():
            break
    flags = fields.get("flags", "").split()
    units = "AVX512_BF16" if "avx512_bf16" in flags else ("AVX-512, no bf16 units" if "avx512f" in flags else "no AVX-512")
    if "amx_bf16" in flags:
        units += ", AMX"
    return f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {units}), {os.cpu_count()} cores"


def last_json(cmd):
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--presets", default="tiny,nano,small,base")
    a = ap.parse_args()
    bf16_products = " avx512f" in open("/proc/cpuinfo").read()
    data = os.path.join(here, "..", "data", "tinyshakespeare.txt")
    rows = []
    for preset in a.presets.split(","):
        steps = str(STEPS[preset])
        runs = {
            "ours": [a.binary, "bench", "--config", preset, "--threads", "2", "--steps", steps, "--data", data],
            "ours_fp32": [a.binary, "bench", "--config", preset, "--threads", "2", "--steps", steps, "--data", data, "--precision", "fp32"],
            "ours_bf16": [a.binary, "bench", "--config", preset, "--threads", "2", "--steps", steps, "--data", data, "--precision", "bf16"],
            "torch_fp32": [sys.executable, os.path.join(here, "pytorch_bench.py"), "--config", preset, "--threads", "2", "--steps", steps],
            "torch_bf16": [sys.executable, os.path.join(here, "pytorch_bench.py"), "--config", preset, "--threads", "2", "--steps", steps, "--autocast"],
        }
        if not bf16_products:
            del runs["ours_bf16"]
        for r in range(a.rounds):
            got = {name: last_json(cmd) for name, cmd in runs.items()}
            best = max(("torch_fp32", "torch_bf16"), key=lambda k: got[k]["tokens_per_s"])
            rows.append((preset, r + 1, got["ours"]["precision"], got["ours"]["tokens_per_s"], got["ours_fp32"]["tokens_per_s"],
                         got["ours_bf16"]["tokens_per_s"] if bf16_products else None,
                         got[best]["tokens_per_s"], "bf16 autocast" if best == "torch_bf16" else "fp32", got["torch_fp32"]["torch"]))
    print(f"CPU: {cpu_name()}; torch {rows[0][8]}; {a.rounds} round(s), the commands alternating; tokens/s\n")
    print("| preset | round | goml-dist default (precision) | goml-dist fp32 | goml-dist bf16 | PyTorch best | default / PyTorch | fp32 / PyTorch | bf16 / PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, r, precision, ours, fp32, bf16, torch_best, which, _ in rows:
        b, br = (f"{bf16:,.0f}", f"{bf16 / torch_best:.2f}×") if bf16 else ("no AVX-512", "")
        print(f"| {preset} | {r} | {ours:,.0f} ({precision}) | {fp32:,.0f} | {b} | {torch_best:,.0f} ({which}) | {ours / torch_best:.2f}× | {fp32 / torch_best:.2f}× | {br} |")


if __name__ == "__main__":
    main()
