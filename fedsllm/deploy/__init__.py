"""Deployment as containers: the compose file generator (compose.py), the
in-container helper that starts a role (supervise.py), and tc on a
container's own interface (links.py)."""
