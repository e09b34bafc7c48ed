"""Pretraining recipes (YAML), installed as `byola.recipes`; `byola pretrain --recipe NAME` reads NAME.yaml."""
