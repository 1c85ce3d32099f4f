"""Write the sm_90 PTX and the ptxas register/spill lines of every Triton kernel configuration.

    python .ci/sinkhorn-ptx.py before/     # on the old code (no GPU needed; not interpreted)
    python .ci/sinkhorn-ptx.py after/      # on the new code
    .ci/sinkhorn-ptx-compare before after  # SAME / PERM (reordered) / DIFF per kernel

Compiles offline for a GPUTarget("cuda", 90) with the ptxas bundled with Triton, so a kernel
edit can be shown to generate the same code on a machine without a GPU.
"""

import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
import triton  # noqa: E402 - after the environment is set
from triton.backends.compiler import GPUTarget  # noqa: E402 - after the environment is set
from triton.compiler import ASTSource  # noqa: E402 - after the environment is set

from ram_ot.ot import _triton as T  # noqa: E402 - after the environment is set

outdir = sys.argv[1]
os.makedirs(outdir, exist_ok=True)
jobs = []
for dtype in ("fp32", "fp64"):
    for bal in (True, False):
        for onchip, bn, bm, w in (
            (True, 64, 128, 16),
            (True, 8, 8, 1),
            (False, 64, 128, 8),
            (False, 32, 128, 8),
        ):
            jobs.append(
                ("fused", dtype, dict(BALANCED=bal, ONCHIP=onchip, BLOCK_N=bn, BLOCK_M=bm), w)
            )
        for bn, bm1, bm2, w in ((256, 64, 16, 8), (64, 64, 0, 4), (16, 16, 0, 4)):
            jobs.append(
                ("resident", dtype, dict(BALANCED=bal, BLOCK_N=bn, BLOCK_M1=bm1, BLOCK_M2=bm2), w)
            )
        jobs.append(("split_decide", dtype, dict(BALANCED=bal, BLOCK_RB=32, BLOCK_CB=8), 1))
    jobs.append(("split_rows", dtype, dict(BLOCK_N=32, BLOCK_M=128), 4))
    jobs.append(("split_cols", dtype, dict(BLOCK_M=128), 4))
    jobs.append(("split_check", dtype, dict(BLOCK_N=32, BLOCK_M=128), 4))


def clean(ptx):
    keep = []
    for ln in ptx.splitlines():
        s = ln.strip()
        if s.startswith(".loc") or s.startswith(".file") or s.startswith("//"):
            continue
        keep.append(ln)
    txt = "\n".join(keep)
    # debug sections hold file names / line tables
    txt = re.sub(r"\.section\s+\.debug_\w+\s*\{.*?\n\s*\}", "", txt, flags=re.S)
    return txt


for name, dtype, consts, warps in jobs:
    jit_fn = T._kernel(name)
    sig = T._signature(jit_fn, consts, dtype)
    comp = triton.compile(
        ASTSource(jit_fn, sig, constexprs=consts),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": warps},
    )
    tag = f"{name}-{dtype}-" + "-".join(f"{k}{int(v)}" for k, v in consts.items()) + f"-w{warps}"
    ptx = clean(comp.asm["ptx"])
    with open(os.path.join(outdir, tag + ".ptx"), "w") as fh:
        fh.write(ptx)
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "k.ptx")
        open(p, "w").write(comp.asm["ptx"])
        r = subprocess.run(
            [
                triton.knobs.nvidia.ptxas.path,
                "-v",
                "--gpu-name=sm_90a",
                p,
                "-o",
                os.path.join(tmp, "k.cubin"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    info = "; ".join(
        line.split(":", 1)[-1].strip()
        for line in r.stderr.splitlines()
        if "spill" in line or "registers" in line
    )
    with open(os.path.join(outdir, "ptxas.txt"), "a") as fh:
        fh.write(f"{tag}: {info}\n")
    print(tag, info, flush=True)
