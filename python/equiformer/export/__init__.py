"""Export: the engine contract, the TorchScript writer and the official-checkpoint import."""
