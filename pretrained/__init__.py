"""Models shipped with byola (installed as `byola.pretrained`); see MODEL_CARD.md."""
