"""cafe's embedded default: a small ViT trained on the shapes dataset, and SAEs on its tokens."""
