"""Training loops: supervised pretraining and episodic meta-training."""
