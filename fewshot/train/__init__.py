"""Training loops: supervised pretraining (here) and meta-training."""
