"""The main server role: the server sub-network and one shared server-side LoRA."""
