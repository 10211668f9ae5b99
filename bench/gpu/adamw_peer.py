#!/usr/bin/env python3
"""The peer line of the GPU step breakdown: torch's fused AdamW step on the parameters of
`onebit train --model large --vocab V` (train/model.cpp's BERT for masked LM, tensor for tensor).

Usage: adamw_peer.py OUT.json [--vocab 8192] [--iterations 20]

Times optimizer.step() alone (gradients already in place, CUDA events, two untimed steps first)
and writes the median and minimum in milliseconds with the parameter count. Needs a CUDA device.
"""
import argparse
import json
import statistics

import torch


def bert_large_shapes(vocab, hidden=1024, layers=24, intermediate=4096, max_positions=512, type_vocab=2):
    """The parameter shapes of train/model.cpp's BertForMlm for --model large."""
    shapes = [(vocab, hidden), (max_positions, hidden), (type_vocab, hidden), (hidden,), (hidden,)]
    for _ in range(layers):
        for _ in range(4):  # query, key, value, attention out
            shapes += [(hidden, hidden), (hidden,)]
        shapes += [(hidden,), (hidden,)]  # attention norm
        shapes += [(intermediate, hidden), (intermediate,), (hidden, intermediate), (hidden,)]
        shapes += [(hidden,), (hidden,)]  # ffn norm
    shapes += [(hidden, hidden), (hidden,), (hidden,), (hidden,), (vocab,)]  # mlm dense, norm, bias
    return shapes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--iterations", type=int, default=20)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("adamw_peer: no CUDA device")
    gen = torch.Generator(device="cuda").manual_seed(1)
    params = []
    for shape in bert_large_shapes(a.vocab):
        p = torch.nn.Parameter(torch.randn(shape, device="cuda", generator=gen) * 0.02)
        p.grad = torch.randn(shape, device="cuda", generator=gen) * 1e-3
        params.append(p)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=True)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ms = []
    for it in range(-2, a.iterations):
        start.record()
        opt.step()
        stop.record()
        stop.synchronize()
        if it >= 0:
            ms.append(start.elapsed_time(stop))
    out = {
        "what": "torch.optim.AdamW(fused=True).step() on onebit train's BERT-Large parameters",
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in params),
        "tensors": len(params),
        "vocab": a.vocab,
        "ms_median": statistics.median(ms),
        "ms_min": min(ms),
        "iterations": a.iterations,
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"adamw_peer: fused AdamW step {out['ms_median']:.2f} ms over {out['parameters']} parameters")


if __name__ == "__main__":
    main()
