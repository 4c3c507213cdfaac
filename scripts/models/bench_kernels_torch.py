"""PyTorch's side of `cargo bench -p diffusion-models --bench kernels`: the same
attention, linear and GEGLU shapes, f32, with the same thread count, timed as
the median of 10 calls after 2 warm-up calls. Prints one line per workload
(milliseconds) and, with --out, writes them as JSON.

    python3 scripts/models/bench_kernels_torch.py --threads 2
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

ATTENTION = [
    (2, 8, 1024, 1024, 8),
    (2, 8, 1024, 77, 8),
    (2, 8, 256, 256, 16),
    (2, 8, 4096, 4096, 40),
    (2, 8, 4096, 77, 40),
    (2, 8, 1024, 1024, 80),
]
LINEAR = [(2048, 64, 64), (128, 256, 256), (8192, 320, 320), (154, 768, 768)]
GEGLU = [(2048, 64), (512, 128), (8192, 320)]


def median_ms(fn, runs=10):
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = {}
    with torch.inference_mode():
        for b, h, lq, lk, d in ATTENTION:
            q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)
            rows[f"attention/{b}x{h}x{lq}x{lk}x{d}"] = median_ms(
                lambda: F.scaled_dot_product_attention(q, k, v)
            )
        for m, k, n in LINEAR:
            x, w, bias = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
            rows[f"linear/{m}x{k}x{n}"] = median_ms(lambda: F.linear(x, w, bias))
        for m, dim in GEGLU:
            inner = 4 * dim
            x, w, bias = torch.randn(m, dim), torch.randn(2 * inner, dim), torch.randn(2 * inner)

            def geglu():
                value, gate = F.linear(x, w, bias).chunk(2, dim=-1)
                return value * F.gelu(gate)

            rows[f"geglu/{m}x{dim}"] = median_ms(geglu)
    for name, ms in rows.items():
        print(f"{name:<32} {ms:10.3f} ms")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": args.threads, "torch": torch.__version__, "ms": rows}, f, indent=1)


if __name__ == "__main__":
    main()
