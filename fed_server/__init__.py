"""The federated server role: rounds, FedAvg of client adapters, checkpoints."""
