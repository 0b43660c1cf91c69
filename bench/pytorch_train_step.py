#!/usr/bin/env python3
"""Times one MLP training step in PyTorch: the baseline for
`crowdtrain bench train-step`.

The same work as crowdtrain's benchmark: an MLP 784-256-10 with ReLU,
softmax cross-entropy, AdamW with PyTorch's defaults (lr 1e-3, betas
0.9/0.999, eps 1e-8, weight decay 0.01), forward + backward + optimizer step,
on 16 fixed random batches cycled through, after a warm-up. Prints one JSON
object with the median samples/s over the repetitions.
"""
import argparse
import json
import statistics
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    inputs = [torch.randn(args.batch, 784) for _ in range(16)]
    targets = [torch.randint(0, 10, (args.batch,)) for _ in range(16)]

    def step(index):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs[index % 16]), targets[index % 16])
        loss.backward()
        optimizer.step()

    for index in range(args.warmup):
        step(index)
    rates = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for index in range(args.steps):
            step(index)
        rates.append(args.steps * args.batch / (time.perf_counter() - started))
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "samples_per_sec": statistics.median(rates),
        "samples_per_sec_min": min(rates),
        "samples_per_sec_max": max(rates),
    }))


if __name__ == "__main__":
    main()
