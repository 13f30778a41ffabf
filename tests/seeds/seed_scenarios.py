"""The code of the tutorial notes in ../shared/seeds/, with the import made swappable.

Run as ``python seed_scenarios.py torch.optim`` or ``... fastoptim``: the
output must be identical.  Each section is the seeds' own code (comments
translated, print statements kept); only ``optim`` changes.
"""

import importlib
import os
import sys
import tempfile

import torch
import torch.nn as nn

optim = importlib.import_module(sys.argv[1])
workdir = tempfile.mkdtemp()


def set_seed(seed=1):
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- seed 001: step with lr=1, the param is shared not copied, zero_grad, add_param_group
set_seed(1)
weight = torch.randn((2, 2), requires_grad=True)
weight.grad = torch.ones((2, 2))
optimizer = optim.SGD([weight], lr=1)
print("weight before step:{}".format(weight.data))
optimizer.step()
print("weight after step:{}\n".format(weight.data))
print("same object:", id(optimizer.param_groups[0]["params"][0]) == id(weight))
print("weight.grad is \n{}".format(weight.grad))
optimizer.zero_grad()
print("after optimizer.zero_grad(), weight.grad is {}\n".format(weight.grad))
print("optimizer.param_groups is\n{}\n".format(optimizer.param_groups))
w2 = torch.randn((3, 3), requires_grad=True)
optimizer.add_param_group({"params": w2, "lr": 0.0001})
print("optimizer.param_groups is\n{}".format(optimizer.param_groups))

# --- seed 001/003: state_dict, save, load_state_dict overrides the constructor's lr
weight.grad = torch.ones((2, 2))
optimizer = optim.SGD([weight], lr=0.1, momentum=0.9)
print("state_dict before step:\n", optimizer.state_dict())
for i in range(10):
    optimizer.step()
print("state_dict after step:\n", optimizer.state_dict())
path = os.path.join(workdir, "optimizer_state_dict.pkl")
torch.save(optimizer.state_dict(), path)
optimizer = optim.SGD([weight], lr=0.2, momentum=0.9)
state_dict = torch.load(path)
print("state_dict before load state:\n", optimizer.state_dict())
optimizer.load_state_dict(state_dict)
print("state_dict after load state:\n", optimizer.state_dict())
print("lr after load:", optimizer.param_groups[0]["lr"])


# --- seed 002: per-layer learning rates on a small regression net
class TestNet(nn.Module):
    def __init__(self):
        super(TestNet, self).__init__()
        self.hidden = nn.Sequential(nn.Linear(13, 10), nn.ReLU())
        self.regression = nn.Linear(10, 1)

    def forward(self, x):
        return self.regression(self.hidden(x))


set_seed(2)
testnet = TestNet()
optimizer = optim.Adam(testnet.parameters(), lr=0.001)
optimizer = optim.Adam(
    [{"params": testnet.hidden.parameters(), "lr": 0.001}, {"params": testnet.regression.parameters(), "lr": 0.01}],
    lr=1e-2,
)
print([g["lr"] for g in optimizer.param_groups])
loss_fn = nn.MSELoss()
x, y = torch.randn(64, 13), torch.randn(64, 1)
dataset = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
for epoch in range(4):
    for input, target in dataset:
        optimizer.zero_grad()
        output = testnet(input)
        loss = loss_fn(output, target)
        loss.backward()
        optimizer.step()
    scheduler.step()
    print("epoch", epoch, "loss %.8f" % loss.item(), "lr", scheduler.get_last_lr())

# --- seed 004: options per group, and step(closure)
set_seed(4)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
optimizer1 = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
optimizer = optim.SGD([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 1e-3}], lr=1e-2, momentum=0.9)
data = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(3)]
for input, target in data:
    def closure():
        optimizer.zero_grad()
        output = model(input)
        loss = loss_fn(output, target)
        loss.backward()
        return loss

    print("closure loss %.8f" % optimizer.step(closure).item())
lbfgs = optim.LBFGS(model.parameters(), lr=0.5)
for input, target in data:
    def closure():
        lbfgs.zero_grad()
        loss = loss_fn(model(input), target)
        loss.backward()
        return loss

    print("lbfgs loss %.8f" % lbfgs.step(closure).item())
print("final", [p.detach().sum().item() for p in model.parameters()])
