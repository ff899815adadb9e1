"""Deployment: nginx, systemd and Kubernetes files, and the one-machine scale-out (netns)."""
