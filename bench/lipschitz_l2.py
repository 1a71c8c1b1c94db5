"""Exact minimal l2 distortion: HiGHS outer-approximation cuts vs the SCIP MIQP (issue 12).

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/lipschitz_l2.py   # needs advrobust[scip]
"""
import time

import torch
from torch import nn

from advrobust.exact import MinimalDistortion

torch.set_num_threads(1)


def net(seed: int, d: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(d, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 3))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        m[0].weight.mul_(3 / d ** 0.5)
    return m.eval()


for d in (2, 5, 10):
    tot = {"highs": 0.0, "scip": 0.0}
    agree = n = 0
    for seed in range(3):
        m = net(seed, d)
        x = torch.rand((2, d), generator=torch.Generator().manual_seed(seed + 50))
        y = m(x).argmax(1)
        res = {}
        for s in ("highs", "scip"):
            t = time.time()
            res[s] = MinimalDistortion(norm="l2", solver=s, time_limit=60, max_eps=0.5)(m, x, y)
            tot[s] += time.time() - t
        for i in range(2):
            if res["highs"].status[i] == res["scip"].status[i] == "optimal":
                n += 1
                gap = float(res["highs"].distance[i]) - float(res["scip"].distance[i])
                agree += abs(gap) < 1e-3
    print(f"d={d}: samples optimal in both {n}, agree {agree}, highs {tot['highs']:.1f}s, "
          f"scip {tot['scip']:.1f}s (6 samples)", flush=True)
