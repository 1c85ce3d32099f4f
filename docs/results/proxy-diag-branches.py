"""Branch-wise ZSL mAP of RAM on Emoji-COCO, before and after training (seed 0, the bench protocol)."""
import torch, warnings
warnings.simplefilter("ignore")
from torch.utils.data import DataLoader
from ram_ot.backbones.open_clip import load_clip
from ram_ot.baselines import build_baseline
from ram_ot.bench.proxy import Settings
from ram_ot.data import build_transform, clip_normalization, coco_zsl_datasets
from ram_ot.metrics import MultiLabelMetrics
from ram_ot.training import build_optimizers, build_schedulers, seed_everything, train_one_epoch
torch.set_num_threads(2)
s = Settings()
clip, tok, _ = load_clip("RAM-Proxy-ViT", "emoji")
mean, std = clip_normalization(clip)
data = coco_zsl_datasets("/tmp/ec_full", train_transform=build_transform(64, train=True, mean=mean, std=std, padding=s.padding),
                         test_transform=build_transform(64, train=False, mean=mean, std=std))
unseen = list(data.split.unseen); seen = list(data.split.seen)
ds = data.test_zsl
x = torch.stack([ds[i][0] for i in range(len(ds))]); y = ds.targets.float()
def mAP(v):
    m = MultiLabelMetrics(len(unseen), ks=(3,)); m.update(v, y); return round(100 * m.compute().mAP, 2)
def report(model, tag):
    model.eval()
    with torch.no_grad():
        o = model(x, unseen)
    print(f"{tag}: global {mAP(o.logits_global.softmax(-1))}  local {mAP(o.logits_local.softmax(-1))}  fused {mAP(o.scores)}  tau_loc {float(model.head.temperature_local):.4f} tau_g {float(model.head.temperature_global):.4f}", flush=True)
seed_everything(0); torch.manual_seed(0)
model = build_baseline("ram", clip, tok)
report(model, "RAM before training")
train_set, _ = data.train.split(s.val_fraction, seed=0, transform=data.test_gzsl.transform)
loader = DataLoader(train_set, batch_size=s.batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))
opts = build_optimizers(model, lr=s.lr, lr_embeds=s.lr_embeds)
sch = build_schedulers(opts, total_steps=s.epochs * len(loader), warmup_steps=len(loader) // 2)
step = 0
for e in range(s.epochs):
    step = train_one_epoch(model, loader, seen, opts, device="cpu", schedulers=sch, step=step).step
    report(model, f"RAM after epoch {e + 1}")
