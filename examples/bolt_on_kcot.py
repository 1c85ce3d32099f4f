"""Bolt RAM's KCOT head onto another backbone: the patch tokens of a timm ViT.

The head only needs a global embedding (B, D), region embeddings (B, N, D) and label
embeddings (C, D) in one space; where they come from does not matter. Here a small timm ViT
(random weights, offline) gives CLS + patch tokens, a linear layer maps them into a 128-d
label space, and learnable vectors stand in for the text embeddings of five label names.
One training step, then scores in eval mode.

Run: ``python examples/bolt_on_kcot.py``
"""

import timm
import torch

from ram_ot.heads import KCOTHead
from ram_ot.kcot import KnowledgeConstrainedOT


def main() -> None:
    torch.manual_seed(0)
    backbone = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=96
    )
    proj = torch.nn.Linear(backbone.embed_dim, 128)  # tokens -> label space
    labels = torch.nn.Parameter(torch.randn(5, 128))  # (C, D): stand-ins for text embeddings
    # paper defaults (KCOT matching, MMC loss on both branches), with more Sinkhorn iterations
    # than the reference's 100: random features make some plans converge slowly
    head = KCOTHead(KnowledgeConstrainedOT(max_iter=300))
    params = [*backbone.parameters(), *proj.parameters(), labels, *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    images = torch.randn(4, 3, 96, 96)
    targets = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])

    tokens = backbone.forward_features(images)  # (B, 1 + N, W)
    image_global = proj(tokens[:, 0])  # (B, D) from the CLS token
    image_regions = proj(tokens[:, backbone.num_prefix_tokens :])  # (B, N, D) patch tokens
    out = head(image_global, image_regions, labels, targets=targets)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    print(f"training step: loss {out.loss.item():.4f}, plan {tuple(out.plan.shape)}")

    head.eval()
    with torch.no_grad():
        tokens = backbone.forward_features(images)
        scores = head(proj(tokens[:, 0]), proj(tokens[:, 1:]), labels).scores  # (B, C)
    print(f"scores {tuple(scores.shape)}, top label per image: {scores.argmax(-1).tolist()}")


if __name__ == "__main__":
    main()
