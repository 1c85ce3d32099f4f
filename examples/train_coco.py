"""Train RAM on COCO 2014 (48 seen / 17 unseen labels) and report ZSL / GZSL metrics.

Offline demo (synthetic COCO-format data + a tiny random open_clip model, ~1 min on a CPU)::

    python examples/train_coco.py --demo --output-dir runs/demo

Real data (COCO 2014 with ``annotations/instances_{train,val}2014.json``, ``train2014/``,
``val2014/``), one GPU or many::

    python examples/train_coco.py --coco-root /data/coco --output-dir runs/coco --amp --ema
    torchrun --nproc-per-node 8 examples/train_coco.py --coco-root /data/coco --output-dir runs/coco
    # multi-node: torchrun --nnodes 2 --node-rank {0,1} --rdzv-endpoint HOST:PORT ... (same flags)

Your own images (CSV or json lists, VOC 2007, COCO 2017), supervised or zero-shot: see
``docs/own_data.md``::

    python examples/train_coco.py --train-list train.csv --test-list test.csv --output-dir runs/mine

Writes ``<output-dir>/train.log``, ``<output-dir>/metrics.json`` (one record per evaluation),
``<output-dir>/last.pt`` (every epoch; ``--resume`` continues from it) and ``best.pt`` (the
weights with the best mAP on the validation images held out of train; never chosen on test).
``python examples/train_coco.py --help`` lists every flag.

The run itself is :func:`ram_ot.cli.train.main`: it parses the flags, builds the model
(``ram_ot.model.build_ram``), the datasets and loaders (``build_datasets``, ``build_loaders``),
the optimisers, schedules and EMA (``ram_ot.training``), then trains, evaluates
(``ram_ot.metrics``) and checkpoints every epoch.
"""

import os
import sys
import time

from ram_ot.cli.train import main

if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done in {time.perf_counter() - t0:.1f} s")
    sys.exit(rc)
