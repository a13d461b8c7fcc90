"""beads-runner: turns a beads backlog into landed, gated commits written by OpenCode sessions."""

__version__ = "0.1.0"
