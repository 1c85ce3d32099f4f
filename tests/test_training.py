"""ram_ot.training: EMA, optimisers, schedule (against timm's scheduler), checkpoints, RNG, sampler."""

import math
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from ram_ot.training import (
    CosineWarmup,
    EpochCosine,
    ModelEMA,
    ShardSampler,
    all_gather_objects,
    build_epoch_schedulers,
    build_optimizers,
    build_schedulers,
    capture_rng_state,
    load_checkpoint,
    make_grad_scaler,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
    train_step,
)


class Toy(nn.Module):
    """A frozen layer, a trainable adapter with BatchNorm, token embeddings and a temperature."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.adapter = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.embeds = nn.Parameter(torch.randn(3, 4))
        self.temperature = nn.Parameter(torch.tensor(0.5))

    def param_groups(self, lr, weight_decay, *, lr_mult, lr_embeds, weight_decay_embeds):
        return [
            {
                "name": "adapters",
                "params": list(self.adapter.parameters()),
                "lr": lr * lr_mult,
                "weight_decay": weight_decay,
            },
            {"name": "head", "params": [self.temperature], "lr": lr, "weight_decay": weight_decay},
            {
                "name": "embeds",
                "params": [self.embeds],
                "lr": lr_embeds,
                "weight_decay": weight_decay_embeds,
            },
        ]

    def forward(self, x, labels, targets=None):
        logits = self.adapter(self.frozen(x)) @ self.embeds.t() / self.temperature  # (B, 3)
        loss = (
            nn.functional.binary_cross_entropy_with_logits(logits, targets)
            if targets is not None
            else None
        )
        return type("Out", (), {"scores": logits.sigmoid(), "loss": loss})()


def test_build_optimizers_follows_the_reference_split():
    m = Toy()
    adam, sgd = build_optimizers(m, lr=1e-3, weight_decay=1e-4, lr_embeds=2e-3)
    assert isinstance(adam, torch.optim.AdamW) and isinstance(sgd, torch.optim.SGD)
    assert [g["name"] for g in adam.param_groups] == ["adapters", "head"]
    assert [g["lr"] for g in adam.param_groups] == pytest.approx([1e-4, 1e-3])
    assert sgd.param_groups[0]["lr"] == 2e-3 and sgd.param_groups[0]["momentum"] == 0.9
    plain = build_optimizers(nn.Linear(2, 2), lr=1e-3)
    assert len(plain) == 1 and len(plain[0].param_groups[0]["params"]) == 2


@pytest.mark.parametrize("warmup", [0, 3])
def test_cosine_warmup_matches_timm(warmup):
    from timm.scheduler import CosineLRScheduler

    base, total = 0.1, 20
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    ref = CosineLRScheduler(
        opt, t_initial=total, lr_min=0.002 * base, warmup_t=warmup, warmup_lr_init=0.01 * base,
        warmup_prefix=False, cycle_limit=1, t_in_epochs=False,
    )  # fmt: skip
    f = CosineWarmup(total, warmup_steps=warmup)
    for t in range(total):
        assert base * f(t) == pytest.approx(ref._get_lr(t)[0], rel=1e-12)


def test_schedulers_step_the_learning_rate():
    opts = build_optimizers(Toy(), lr=1e-2)
    scheds = build_schedulers(opts, total_steps=10, warmup_steps=2)
    assert opts[0].param_groups[1]["lr"] == pytest.approx(1e-2 * 0.01)
    for o in opts:
        o.step()
    for s in scheds:
        s.step()
    assert opts[0].param_groups[1]["lr"] == pytest.approx(
        1e-2 * CosineWarmup(10, warmup_steps=2)(1)
    )


def _official_lr(epoch, group_lr, base_lr=5e-5):
    """The reference's lr in epoch `epoch` (solver/make_scheduler.py, written out by hand)."""
    w, m = 0.01 * base_lr, 0.002 * base_lr  # warmup_lr_init, lr_min: absolute, every group
    if epoch < 3:  # WARMUP_EPOCHS
        return w + epoch * (group_lr - w) / 3
    return m + 0.5 * (group_lr - m) * (1 + math.cos(math.pi * epoch / 60))  # SCHEDULER_MAX_EPOCHS


def test_epoch_schedule_is_the_references_per_epoch_lr():
    base, spe, epochs = 5e-5, 4, 6
    opts = build_optimizers(Toy(), lr=base, lr_embeds=1e-3)  # groups: 5e-6, 5e-5 | 1e-3
    scheds = build_epoch_schedulers(opts, base_lr=base, steps_per_epoch=spe)
    seen = []
    for epoch in range(1, epochs + 1):
        for _ in range(spe):
            lrs = [g["lr"] for o in opts for g in o.param_groups]
            seen.append(lrs)
            want = [_official_lr(epoch, b) for b in (5e-6, 5e-5, 1e-3)]
            assert lrs == pytest.approx(want, rel=1e-12), epoch
            for o in opts:
                o.step()
            for s in scheds:
                s.step()
    # warm-up starts from 5e-7 for every group (epoch 0 of the formula), epoch 1 is a third up
    assert _official_lr(0, 1e-3) == pytest.approx(5e-7)
    assert seen[0][2] == pytest.approx(5e-7 + (1e-3 - 5e-7) / 3)
    # constant within an epoch; over the reference's 6 epochs the lr barely decays
    assert seen[spe * 5] == seen[spe * 6 - 1]
    assert seen[-1][1] / base == pytest.approx(0.9755, abs=1e-3)


def test_epoch_cosine_matches_timm_stepped_per_epoch():
    from timm.scheduler import CosineLRScheduler

    base = 5e-5
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    ref = CosineLRScheduler(
        opt, t_initial=60, lr_min=0.002 * base, cycle_mul=1.0, cycle_decay=0.1, warmup_lr_init=0.01 * base,
        warmup_t=3, cycle_limit=1, t_in_epochs=True,
    )  # fmt: skip
    f = EpochCosine(1e-3, steps_per_epoch=7, warmup_lr=0.01 * base, min_lr=0.002 * base)
    for epoch in range(1, 70):
        ref.step(epoch)  # the reference steps at the start of each epoch
        assert f.lr(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        assert 1e-3 * f(7 * (epoch - 1) + 3) == pytest.approx(f.lr(epoch), rel=1e-12)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        EpochCosine(1e-3, steps_per_epoch=0)


def test_ema_official_mode_copies_temperature_and_restarts():
    torch.manual_seed(0)
    m = Toy()
    ema = ModelEMA(m, decay=0.9, copy=("temperature",))
    w0 = m.embeds.detach().clone()
    with torch.no_grad():
        m.embeds.add_(1.0)
        m.temperature.fill_(0.25)
    ema.update(m)
    torch.testing.assert_close(ema.shadow["embeds"], 0.9 * w0 + 0.1 * (w0 + 1.0))
    assert float(ema.shadow["temperature"]) == 0.25  # copied, not 0.9 * 0.5 + 0.1 * 0.25
    ema.reset(m)  # the reference's new ModelEma at the start of each epoch
    torch.testing.assert_close(ema.shadow["embeds"], m.embeds.detach())
    assert ema.num_updates == 0
    with pytest.raises(ValueError, match="copy"):
        ModelEMA(m, copy=("no_such_weight",))


def test_ema_average_swap_and_state():
    torch.manual_seed(0)
    m = Toy()
    ema = ModelEMA(m, decay=0.9)
    assert "frozen.weight" not in ema.shadow and "adapter.1.running_mean" in ema.shadow
    w0 = m.embeds.detach().clone()
    with torch.no_grad():
        m.embeds.add_(1.0)
    ema.update(m)
    torch.testing.assert_close(ema.shadow["embeds"], 0.9 * w0 + 0.1 * (w0 + 1.0))
    current = m.embeds.detach().clone()
    with ema.swapped(m):
        torch.testing.assert_close(m.embeds.detach(), ema.shadow["embeds"])
    torch.testing.assert_close(m.embeds.detach(), current)
    other = ModelEMA(Toy(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and other.num_updates == 1
    torch.testing.assert_close(other.shadow["embeds"], ema.shadow["embeds"])
    warm = ModelEMA(m, decay=0.9997, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)


def test_checkpoint_roundtrip_restores_training_state(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), (torch.rand(8, 3) < 0.5).float()

    def setup():
        torch.manual_seed(1)
        m = Toy()
        opts = build_optimizers(m, lr=1e-2)
        return (
            m,
            opts,
            build_schedulers(opts, total_steps=10, warmup_steps=2),
            ModelEMA(m, decay=0.5),
        )

    m, opts, scheds, ema = setup()
    scaler = make_grad_scaler(torch.device("cpu"), enabled=False)
    for _ in range(3):
        train_step(m, x, y, None, opts, schedulers=scheds, ema=ema)
    path = tmp_path / "ck" / "last.pt"
    seed_everything(123)
    save_checkpoint(path, model=m, optimizers=opts, schedulers=scheds, scaler=scaler, ema=ema, epoch=2, step=3,
                    extra={"seed": 7})  # fmt: skip
    expect_draws = (torch.rand(3), np.random.rand(), random.random())
    for _ in range(2):
        train_step(m, x, y, None, opts, schedulers=scheds, ema=ema)
    expect_w = m.embeds.detach().clone()

    m2, opts2, scheds2, ema2 = setup()
    ck = load_checkpoint(
        path, model=m2, optimizers=opts2, schedulers=scheds2, scaler=scaler, ema=ema2
    )
    assert ck.epoch == 2 and ck.step == 3 and ck.extra == {"seed": 7}
    draws = (torch.rand(3), np.random.rand(), random.random())
    torch.testing.assert_close(draws[0], expect_draws[0])
    assert draws[1:] == expect_draws[1:]
    for _ in range(2):
        train_step(m2, x, y, None, opts2, schedulers=scheds2, ema=ema2)
    torch.testing.assert_close(m2.embeds.detach(), expect_w, rtol=0, atol=0)
    torch.testing.assert_close(ema2.shadow["embeds"], ema.shadow["embeds"], rtol=0, atol=0)
    assert opts2[0].param_groups[0]["lr"] == opts[0].param_groups[0]["lr"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    m = Toy()
    path = tmp_path / "last.pt"
    save_checkpoint(path, model=m, epoch=1)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, model=m, epoch=2)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"expected 1 optimizers as saved in .*last.pt, got 0"):
        save_checkpoint(path, model=m, optimizers=build_optimizers(nn.Linear(1, 1), lr=1e-3))
        load_checkpoint(path, model=m)
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt", model=m)


def test_rng_state_roundtrip():
    seed_everything(5)
    state = capture_rng_state()
    a = (torch.randn(2), np.random.randn(), random.random())
    restore_rng_state(state)
    b = (torch.randn(2), np.random.randn(), random.random())
    torch.testing.assert_close(a[0], b[0])
    assert a[1:] == b[1:]


def test_shard_sampler_covers_each_index_once():
    shards = [list(ShardSampler(11, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert [len(ShardSampler(11, rank=r, world_size=3)) for r in range(3)] == [4, 4, 3]
    assert all_gather_objects({"a": 1}) == [{"a": 1}]


def test_train_step_benchmark_runs(capsys):
    from ram_ot.bench.train_step import main

    n = torch.get_num_threads()
    try:
        assert (
            main(
                [
                    "--steps",
                    "2",
                    "--repeats",
                    "1",
                    "--batch-size",
                    "4",
                    "--labels",
                    "6",
                    "--threads",
                    "1",
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    for name in ("bare loop", "script step", "script + checkpoint"):
        assert name in out


# ------------------------------------------------------------- runs that are never lost


@pytest.mark.parametrize("damage", ["empty", "truncated", "corrupt", "not_zip", "foreign"])
def test_damaged_checkpoint_gives_one_clear_error(tmp_path, damage):
    from ram_ot.training import CheckpointError

    m = Toy()
    path = tmp_path / "last.pt"
    save_checkpoint(path, model=m, epoch=1)
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt":  # same size, bytes flipped inside a stored member
        i = data.index(b"PK\x03\x04", 10) + 200
        path.write_bytes(data[:i] + bytes(255 - b for b in data[i : i + 64]) + data[i + 64 :])
    elif damage == "not_zip":
        path.write_bytes(b"hello" * 100)
    else:
        torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, model=m)
    msg = str(info.value)
    assert str(path) in msg and "resume from an intact copy" in msg and info.value.path == str(path)
    assert isinstance(info.value, ValueError)  # the old `except ValueError` still catches it


def test_checkpoint_mode_follows_umask_and_stale_temporaries_are_removed(tmp_path):
    m = Toy()
    stale = tmp_path / ".tmp-last.pt-abc123.pt"  # left by a writer killed mid-save
    stale.write_bytes(b"partial")
    other = tmp_path / ".tmp-best.pt-xyz.pt"  # another destination's: not ours to remove
    other.write_bytes(b"partial")
    old = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "last.pt", model=m, epoch=1)
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path)) == [".tmp-best.pt-xyz.pt", "last.pt"]
    assert (os.stat(tmp_path / "last.pt").st_mode & 0o777) == 0o640


def test_lr_plan_extends_the_schedule_to_the_new_total():
    from ram_ot.training import LRPlan

    base = CosineWarmup(100, warmup_steps=10)
    plan = LRPlan(base)
    assert [plan(t) for t in range(0, 120, 7)] == [base(t) for t in range(0, 120, 7)]
    plan.replan(60, 200)  # --epochs raised at step 60: 100 -> 200 steps
    longer = CosineWarmup(200, warmup_steps=10)
    assert plan(59) == base(59)
    assert all(plan(t) == longer(t) for t in range(60, 260, 9))  # the plan of the new total
    assert plan(200) == pytest.approx(base.min_factor) and plan(100) > 100 * base.min_factor
    # a finished run (at the floor) extended by 50%: back up to the new plan, not at the floor
    done = LRPlan(CosineWarmup(100, warmup_steps=10))
    done.replan(100, 150)
    assert done(100) == pytest.approx(CosineWarmup(150, warmup_steps=10)(100)) and done(100) > 0.2
    # a base without total_steps: a half cosine from the current factor to its floor
    generic = LRPlan(lambda t: max(0.1, 1.0 - t / 100))
    generic.replan(50, 150)
    f = [generic(t) for t in range(50, 151)]
    assert f[0] == pytest.approx(0.5) and f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f, f[1:], strict=False))
    with pytest.raises(ValueError, match="`total` > `t0`"):
        plan.replan(80, 80)


def test_resume_sampler_skips_the_done_part_in_the_same_order():
    from torch.utils.data import DistributedSampler

    from ram_ot.training import ResumeSampler

    ds = list(range(20))
    s = ResumeSampler(DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=3))
    s.set_epoch(2)
    full = list(s)
    s.skip(8)
    assert list(s) == full[8:] and len(s) == 12
    s.set_epoch(2)  # a new epoch clears the skip
    assert list(s) == full and len(s) == 20


def test_non_finite_loss_stops_the_epoch_at_its_step():
    from ram_ot.training import NonFiniteError, train_one_epoch

    m = Toy()
    opts = build_optimizers(m, lr=1e-2)
    x = torch.randn(4, 4)
    bad = x.clone()
    bad[0, 0] = float("nan")
    batches = [(x, torch.ones(4, 3)), (x, torch.zeros(4, 3)), (bad, torch.ones(4, 3))]
    with pytest.raises(
        NonFiniteError, match=r"the loss became nan at step 8 \(train, batch 3\)"
    ) as e:
        train_one_epoch(m, batches, ["a", "b", "c"], opts, device="cpu", step=5)
    assert e.value.step == 8 and e.value.what == "loss"


def test_graceful_stop_turns_a_signal_into_a_flag():
    import signal

    from ram_ot.training import GracefulStop

    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before


def test_non_finite_scores_are_refused_in_evaluation():
    from types import SimpleNamespace

    from ram_ot.training import NonFiniteError, evaluate_split

    class NaNScores(nn.Module):
        def forward(self, images, labels):
            s = torch.rand(images.shape[0], len(labels))
            s[-1, 0] = float("inf")
            return SimpleNamespace(scores=s)

    batches = [(torch.zeros(3, 4), torch.ones(3, 2))]
    with pytest.raises(NonFiniteError, match="the scores became inf in val"):
        evaluate_split(NaNScores(), batches, ["a", "b"], device="cpu", desc="val")


def test_gpu_train_step_benchmark_runs_on_cpu(capsys):
    """The GPU training-step benchmark's code path, at tiny size on the CPU."""
    from ram_ot.bench.train_step_gpu import _labels, main

    args = ["--device", "cpu", "--model", "RAM-Tiny-ViT", "--batch-size", "2", "--labels", "5"]
    args += ["--warmup", "1", "--repeats", "2", "--backends", "torch", "auto"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "failed" not in out
    rows = [line for line in out.splitlines() if line.startswith("| backend=")]
    assert len(rows) >= 4  # two backends x two configs (+ cache-off rows where offered)
    for row in rows:
        ms = float(row.split("|")[2])
        assert ms > 0
    names = _labels(925)
    assert len(set(names)) == 925


def test_gpu_train_step_benchmark_says_when_there_is_no_gpu(capsys):
    from ram_ot.bench.train_step_gpu import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["--device", "cuda"]) == 1
    assert "no CUDA device" in capsys.readouterr().out
