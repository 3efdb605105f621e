"""Full-batch gradient descent, single-sample SGD and mini-batch SGD on the same regression problem.

The loss is a mean over all the data (full batch), over one sample (SGD) or
over k samples (mini-batch): the same model, three different graphs. Draw
each and compare:

    gradtrace render examples/sgd_minibatch.py -o full.svg      -- --mode full
    gradtrace render examples/sgd_minibatch.py -o sgd.svg       -- --mode sgd
    gradtrace render examples/sgd_minibatch.py -o minibatch.svg -- --mode minibatch

    python examples/sgd_minibatch.py [--mode full|sgd|minibatch] [--epochs N]
"""

import argparse

import torch


def data(n=64):
    """y = 3x - 2 plus a little noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, generator=g) * 4 - 2
    y = 3 * x - 2 + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["full", "sgd", "minibatch"], default="minibatch")
    parser.add_argument("--batch", type=int, default=4, help="k, for minibatch")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    x, y = data()
    batch = {"full": len(x), "sgd": 1, "minibatch": args.batch}[args.mode]
    torch.manual_seed(0)
    w = torch.zeros(1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([w, b], lr=0.05)

    for epoch in range(args.epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            xb, yb = x[idx], y[idx]
            optimizer.zero_grad()
            prediction = xb * w + b
            loss = ((prediction - yb) ** 2).mean()  # the mean over this batch's samples
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: w = {w.item():.3f}, b = {b.item():.3f}")


if __name__ == "__main__":
    main()
