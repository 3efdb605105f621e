"""Gradient descent on f(x, y) = x² + 2y², as in the course, written with torch.

Start at (300, -200) with step 0.2, shrink the step by 0.999 each iteration,
stop when the squared gradient norm is at most 1e-20. The gradient is the
analytic (2x, 4y): `gradtrace render examples/gradient_descent.py` shows it on
the first step, (600, -800), and the update SGD made with it.

    python examples/gradient_descent.py [--max-iters N]
"""

import argparse

import torch


def f(point):
    x, y = point[0], point[1]
    return x * x + 2 * y * y


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iters", type=int, default=10_000)
    args = parser.parse_args()

    point = torch.tensor([300.0, -200.0], requires_grad=True)
    optimizer = torch.optim.SGD([point], lr=0.2)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.999)  # step = step * decay
    epsilon = 1e-20
    iteration = 0
    while iteration < args.max_iters:
        optimizer.zero_grad()
        value = f(point)
        value.backward()
        if point.grad.pow(2).sum() <= epsilon:
            break
        optimizer.step()
        schedule.step()
        if iteration % 3 == 1:
            print(tuple(round(v, 6) for v in point.tolist()))
        iteration += 1
    print(f"iterations : {iteration}\nfinal value :\n({tuple(point.tolist())}, {f(point).item()})")


if __name__ == "__main__":
    main()
