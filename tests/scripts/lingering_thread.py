"""A non-daemon helper thread that only the end of the script stops (as a logger or prefetcher would be)."""

import threading

import torch

stop = threading.Event()
helper = threading.Thread(target=stop.wait, name="prefetcher")  # non-daemon: Python waits for it at exit
helper.start()
w = torch.ones(2, requires_grad=True)
opt = torch.optim.SGD([w], lr=0.1)
for _ in range(3):
    opt.zero_grad()
    (w * 3).sum().backward()
    opt.step()
print("training done", flush=True)
stop.set()
helper.join()
