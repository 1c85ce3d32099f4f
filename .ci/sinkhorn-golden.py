"""Golden outputs of every Sinkhorn path, to prove a refactor of the solvers changes no bit.

    TRITON_INTERPRET=1 python .ci/sinkhorn-golden.py save before.pt   # on the old code
    TRITON_INTERPRET=1 python .ci/sinkhorn-golden.py check before.pt  # on the new code

Runs on the CPU, the Triton kernels through Triton's interpreter: every variant (on-chip,
streamed, resident, split, auto) in float32 and float64, with and without masks, balanced,
unbalanced and one-sided, early stop per problem, tol 0, max_iter 0 and 1, a small reg; the
frontend in every grad mode with its gradients; every torch solver (scaling in bmm and mv
form, log-domain, grouped potentials). ``check`` compares every saved tensor with
``torch.equal`` (NaN at the same places counts as equal) and exits 1 on any mismatch. Used
for the shared-helper refactor of ``_triton.py`` / ``_torch.py`` (2141 cases, 0 mismatches).
Not a test: the saved file is about 160 MB.
"""

import math
import os
import sys
import warnings

os.environ.setdefault("TRITON_INTERPRET", "1")
import torch  # noqa: E402 - after the environment is set

torch.set_num_threads(1)
warnings.simplefilter("ignore")
from ram_ot.ot import _torch, _triton, sinkhorn  # noqa: E402 - after the environment is set

out = {}
covered = []


def put(key, tensors):
    assert key not in out, key
    for i, t in enumerate(tensors):
        if t is None:
            continue
        out[f"{key}/{i}"] = t.detach().clone()
    covered.append(key)


def problem(B, N, M, dtype=torch.float32, masked=False, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(B, N, M, generator=gen, dtype=dtype) * scale
    a = torch.rand(B, N, generator=gen, dtype=dtype) + 0.2
    b = torch.rand(B, M, generator=gen, dtype=dtype) + 0.2
    ma = mb = None
    if masked:
        ma = torch.ones(B, N, dtype=torch.bool)
        mb = torch.ones(B, M, dtype=torch.bool)
        for i in range(B):
            ma[i, N - (i % max(N - 1, 1)) :] = N == 1
            mb[i, M - ((i + 1) % max(M - 1, 1)) :] = M == 1
        ma[:, 0] = True
        mb[:, 0] = True
        a = torch.where(ma, a, torch.zeros_like(a))
        b = torch.where(mb, b, torch.zeros_like(b))
    a = a / a.sum(1, keepdim=True)
    b = b / b.sum(1, keepdim=True)
    return cost, a, b, ma, mb


def logs(a, b):
    la = torch.where(a > 0, a.clamp_min(1e-300).log(), torch.full_like(a, -math.inf))
    lb = torch.where(b > 0, b.clamp_min(1e-300).log(), torch.full_like(b, -math.inf))
    return la, lb


def plan(f, g, cost, reg):
    return torch.exp((f[:, :, None] + g[:, None, :] - cost) / reg)


FIS = {"bal": (1.0, 1.0), "unb": (0.8, 0.8), "half": (1.0, 0.7)}
# ---------------- Triton kernels, direct ----------------
tri_cases = [
    # (variant, shape)
    ("onchip", (3, 7, 5)),
    ("onchip", (2, 33, 17)),
    ("onchip", (1, 1, 1)),
    ("stream", (1, 65, 129)),
    ("stream", (2, 9, 6)),
    ("resident", (2, 37, 80)),
    ("resident", (1, 5, 64)),
    ("resident", (1, 1, 1)),
    ("resident", (2, 9, 20)),
    ("split", (1, 33, 130)),
    ("split", (2, 9, 6)),
    ("split", (1, 1, 1)),
    ("auto", (2, 6, 5)),
    ("auto", (2, 70, 150)),
]
for variant, (B, N, M) in tri_cases:
    for dt in (torch.float32, torch.float64):
        if dt == torch.float64 and (N * M > 2000):
            continue
        for masked in (False, True):
            if masked and (N <= 2 or M <= 2):
                continue
            cost, a, b, _, _ = problem(B, N, M, dtype=dt, masked=masked, seed=N + M)
            if B == 2:
                cost = cost * torch.tensor([0.05, 0.5], dtype=dt)[:, None, None]
            la, lb = logs(a, b)
            for fk, (fa, fb) in FIS.items():
                for mi, tol, ce in (
                    (12, 1e-5, 4),
                    (7, 0.0, 1),
                    (45, 1e-4, 3),
                    (1, 1e-3, 1),
                    (0, 1e-3, 1),
                ):
                    kw = dict(reg=0.1, fi_a=fa, fi_b=fb, max_iter=mi, tol=tol, check_every=ce)
                    r = _triton.solve_potentials(cost, la, lb, **kw, _variant=variant)
                    key = f"tri/{variant}/{B}x{N}x{M}/{str(dt)[6:]}/m{int(masked)}/{fk}/{mi},{tol},{ce}"
                    put(key, list(r) + [plan(r[0], r[1], cost, 0.1)])
# small reg
cost, a, b, _, _ = problem(2, 9, 7, seed=5)
la, lb = logs(a, b)
for variant in ("onchip", "stream", "resident", "split"):
    r = _triton.solve_potentials(
        cost,
        la,
        lb,
        reg=1e-3,
        fi_a=1.0,
        fi_b=1.0,
        max_iter=20,
        tol=0.0,
        check_every=1,
        _variant=variant,
    )
    put(f"tri/smallreg/{variant}", r)

# ---------------- frontend, both backends, grad modes ----------------
for backend in ("triton", "torch"):
    for dt in (torch.float32, torch.float64):
        for masked in (False, True):
            cost, a, b, ma, mb = problem(2, 6, 5, dtype=dt, masked=masked, seed=11)
            w = torch.rand(2, 6, 5, dtype=dt, generator=torch.Generator().manual_seed(3))
            for reg_m in (None, 0.5, (float("inf"), 1.0)):
                for reg_type in ("kl", "entropy") if reg_m is not None else ("kl",):
                    grads = ("detach", "implicit") + (("unroll",) if backend == "torch" else ())
                    for grad in grads:
                        c = cost.clone().requires_grad_(grad != "detach")
                        aa = a.clone().requires_grad_(grad != "detach")
                        bb = b.clone().requires_grad_(grad != "detach")
                        res = sinkhorn(
                            c,
                            aa,
                            bb,
                            reg=0.5,
                            reg_m=reg_m,
                            reg_type=reg_type,
                            mask_a=ma,
                            mask_b=mb,
                            max_iter=40,
                            tol=1e-8,
                            check_every=5,
                            backend=backend,
                            grad=grad,
                        )
                        ts = list(res)
                        if grad != "detach":
                            (res.plan * w).sum().backward()
                            ts += [c.grad, aa.grad, bb.grad]
                        put(
                            f"front/{backend}/{str(dt)[6:]}/m{int(masked)}/{reg_m}/{reg_type}/{grad}",
                            ts,
                        )


# ---------------- torch backend functions ----------------
def torch_cases():
    yield "small", problem(3, 7, 5, seed=1)
    yield "small-m", problem(3, 7, 5, masked=True, seed=2)
    yield "ram", problem(4, 49, 80, seed=3)
    yield "ram-m", problem(4, 49, 80, masked=True, seed=4)
    yield "f64", problem(2, 9, 6, dtype=torch.float64, masked=True, seed=5)
    yield "big", problem(2, 300, 260, seed=6)  # N*M > 2^16: mv mode with one thread
    yield "tall", problem(1, 400, 200, masked=True, seed=7)  # mv transposed storage


for name, (cost, a, b, _, _) in torch_cases():
    la, lb = logs(a, b)
    for fk, (fa, fb) in FIS.items():
        for reg in (0.1, 1e-3, 0.02):
            for mi, tol, ce in ((30, 1e-5, 4), (9, 0.0, 1), (60, 1e-4, 10), (1, 1e-3, 1)):
                kw = dict(reg=reg, fi_a=fa, fi_b=fb, max_iter=mi, tol=tol, check_every=ce)
                base = f"torch/{name}/{fk}/{reg}/{mi},{tol},{ce}"
                for threads in (1, 2) if name in ("ram", "big", "small-m") else (1,):
                    torch.set_num_threads(threads)
                    po = torch.empty_like(cost)
                    r = _torch.solve_scaling(cost, la, lb, **kw, plan_out=po)
                    put(f"{base}/scaling/t{threads}", list(r) + [po])
                    po = torch.empty_like(cost)
                    r = _torch.solve_potentials(cost, la, lb, **kw, plan_out=po)
                    put(f"{base}/potentials/t{threads}", list(r) + [po])
                    torch.set_num_threads(1)
                if name in ("big", "tall") and reg == 1e-3:
                    continue
                r = _torch.solve_lse(cost, la, lb, **kw)
                put(f"{base}/lse", r)
                c = cost.clone().requires_grad_(True)
                l1 = la.clone().requires_grad_(True)
                r = _torch.solve_lse(c, l1, lb, **kw)
                (
                    r[0].nan_to_num(0, 0, 0).sin().sum() + r[1].nan_to_num(0, 0, 0).cos().sum()
                ).backward()
                put(f"{base}/lse-grad", list(r) + [c.grad, l1.grad])
                r = _torch.solve_potentials(c, l1, lb, **kw)
                put(f"{base}/potentials-grad", r)

# grouped solve_potentials (group < B)
old = _torch.CPU_CACHE_BUDGET
_torch.CPU_CACHE_BUDGET = 49 * 80 * 4 * 2 * 2  # two problems per group
cost, a, b, _, _ = problem(5, 49, 80, masked=True, seed=9)
la, lb = logs(a, b)
for fk, (fa, fb) in FIS.items():
    po = torch.empty_like(cost)
    r = _torch.solve_potentials(
        cost, la, lb, reg=0.05, fi_a=fa, fi_b=fb, max_iter=50, tol=1e-5, check_every=5, plan_out=po
    )
    put(f"torch/grouped/{fk}", list(r) + [po])
_torch.CPU_CACHE_BUDGET = old

if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    print(len(covered), "cases,", len(out), "tensors")
    if mode == "save":
        torch.save(out, path)
        with open(path + ".cases.txt", "w") as fh:
            fh.write("\n".join(covered) + "\n")
    else:
        ref = torch.load(path)
        assert set(ref) == set(out), set(ref) ^ set(out)
        bad = [
            k
            for k in ref
            if not (
                ref[k].dtype == out[k].dtype
                and ref[k].shape == out[k].shape
                and torch.equal(ref[k], out[k])
            )
        ]
        # torch.equal is False for NaN == NaN; treat matching NaN positions as equal
        bad2 = []
        for k in bad:
            x, y = ref[k], out[k]
            if (
                x.shape == y.shape
                and x.dtype == y.dtype
                and x.is_floating_point()
                and torch.equal(x.isnan(), y.isnan())
                and torch.equal(
                    torch.nan_to_num(x, 0.0, 1.0, -1.0), torch.nan_to_num(y, 0.0, 1.0, -1.0)
                )
                and torch.equal(x.isinf(), y.isinf())
            ):
                continue
            bad2.append(k)
        print("mismatches:", len(bad2), "(NaN-equal:", len(bad) - len(bad2), ")")
        for k in bad2[:30]:
            print("  ", k)
        sys.exit(1 if bad2 else 0)
