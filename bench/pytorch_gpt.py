#!/usr/bin/env python3
"""The PyTorch twin of crowdtrain's GPT: the baseline of bench/gpt-vs-pytorch.sh
and the check that `crowdtrain export` gives a model PyTorch users can load.

The network is crowdtrain's (and nanoGPT's with bias=True): token and position
embeddings, pre-LayerNorm blocks of causal self-attention and a 4x GELU MLP
(tanh form, as GPT-2), a final LayerNorm, the head tied to the token
embedding. Initialisation as nanoGPT: N(0, 0.02), residual projections
N(0, 0.02 / sqrt(2 layers)), zero biases, LayerNorm 1 and 0. AdamW with
weight decay on matrices and embeddings only, gradient clipping at norm 1,
linear warmup then cosine decay, all as nanoGPT's train.py.

    pytorch_gpt.py time   --threads T [--batch 12 --context 64 ...]   -> tokens/s
    pytorch_gpt.py train  --text FILE[.gz] --steps 2000 ...           -> validation loss
    pytorch_gpt.py check  --export DIR --logits FILE.json             -> max |difference|

Each prints one JSON object.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(width, 3 * width)
        self.attn.c_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(width, 4 * width)
        self.mlp.c_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(c, dim=2)
        shape = (b, t, self.heads, c // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers, heads, width, context, vocab):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, width),
            wpe=nn.Embedding(context, width),
            h=nn.ModuleList([Block(width, heads) for _ in range(layers)]),
            ln_f=nn.LayerNorm(width),
        ))
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(t))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def optimizer_for(model, lr, weight_decay, beta2):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, beta2), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, beta2))


def lr_at(step, lr, warmup, total, min_lr):
    """nanoGPT's get_lr at iteration `step` (from 0)."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step > total:
        return min_lr
    ratio = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def train_step(model, optimizer, x, y, clip):
    logits = model(x)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss


def add_model_args(parser):
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--beta2", type=float, default=0.99)
    parser.add_argument("--clip", type=float, default=1.0)


def build(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = GPT(args.layers, args.heads, args.width, args.context, args.vocab)
    return model, optimizer_for(model, args.lr, args.weight_decay, args.beta2)


def time_steps(args):
    """Training steps on fixed random batches, as `crowdtrain bench train-step`."""
    model, optimizer = build(args)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab, (args.batch, args.context + 1), generator=generator) for _ in range(16)]
    # Contiguous inputs and targets, as nanoGPT's get_batch makes them.
    batches = [(batch[:, :-1].contiguous(), batch[:, 1:].contiguous()) for batch in batches]

    def step(index):
        x, y = batches[index % 16]
        train_step(model, optimizer, x, y, args.clip)

    for index in range(args.warmup_steps):
        step(index)
    rates = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for index in range(args.steps):
            step(index)
        rates.append(args.steps * args.batch * args.context / (time.perf_counter() - started))
    return {
        "framework": f"pytorch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "tokens_per_sec": statistics.median(rates),
        "tokens_per_sec_min": min(rates),
        "tokens_per_sec_max": max(rates),
    }


def char_tokens(path):
    """crowdtrain's character tokenizer and split: the vocabulary is the
    text's characters in code-point order; the last tenth is validation."""
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    tokens = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    split = len(tokens) * 9 // 10
    return tokens[:split], tokens[split:], len(vocab)


def train(args):
    """Trains on the same text and split as `crowdtrain train --model gpt`
    (batches drawn with PyTorch's generator, as nanoGPT's get_batch does)
    and reports the loss on the whole validation split, read as crowdtrain
    reads it: windows every `context` tokens."""
    train_tokens, validation, vocab = char_tokens(args.text)
    args.vocab = vocab
    model, optimizer = build(args)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    losses = []
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup, args.steps, args.min_lr)
        offsets = torch.randint(len(train_tokens) - args.context, (args.batch,), generator=generator)
        x = torch.stack([train_tokens[i:i + args.context] for i in offsets])
        y = torch.stack([train_tokens[i + 1:i + 1 + args.context] for i in offsets])
        losses.append(train_step(model, optimizer, x, y, args.clip).item())
    seconds = time.perf_counter() - started
    model.eval()
    total, count = 0.0, 0
    sequences = (len(validation) - 1) // args.context
    with torch.no_grad():
        for first in range(0, sequences, 64):
            starts = range(first * args.context, min(first + 64, sequences) * args.context, args.context)
            x = torch.stack([validation[i:i + args.context] for i in starts])
            y = torch.stack([validation[i + 1:i + 1 + args.context] for i in starts])
            logits = model(x)
            total += F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    return {
        "framework": f"pytorch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "vocab": vocab,
        "val_loss": total / count,
        "train_loss_last": statistics.mean(losses[-max(1, args.steps // 10):]),
        "tokens_per_sec": args.steps * args.batch * args.context / seconds,
    }


def check(args):
    """Loads `crowdtrain export`'s directory into the twin and compares its
    logits on crowdtrain's prompt with crowdtrain's own."""
    from safetensors.torch import load_file

    with open(f"{args.export}/config.json") as f:
        config = json.load(f)
    model = GPT(config["n_layer"], config["n_head"], config["n_embd"], config["block_size"], config["vocab_size"])
    state = load_file(f"{args.export}/model.safetensors")
    state["lm_head.weight"] = state["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(state, strict=True), None
    with open(args.logits) as f:
        reference = json.load(f)
    tokens = torch.tensor([reference["tokens"]], dtype=torch.long)
    model.eval()
    with torch.no_grad():
        logits = model(tokens)[0]
    ours = torch.tensor(reference["logits"], dtype=torch.float32)
    difference = (logits - ours).abs().max().item()
    return {
        "framework": f"pytorch {torch.__version__}",
        "tokens": len(reference["tokens"]),
        "max_abs_difference": difference,
        "within_tolerance": difference <= args.tolerance,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("time")
    add_model_args(timing)
    timing.add_argument("--steps", type=int, default=100)
    timing.add_argument("--warmup-steps", type=int, default=10)
    timing.add_argument("--repeats", type=int, default=3)
    training = commands.add_parser("train")
    add_model_args(training)
    training.add_argument("--text", required=True)
    training.add_argument("--steps", type=int, default=2000)
    checking = commands.add_parser("check")
    checking.add_argument("--export", required=True)
    checking.add_argument("--logits", required=True)
    checking.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    result = {"time": time_steps, "train": train, "check": check}[args.command](args)
    print(json.dumps(result))
    if args.command == "check" and not result["within_tolerance"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
