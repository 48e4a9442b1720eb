"""The client role: data shard, client sub-network + LoRA, the local training loop."""
