"""coi launcher: the unprivileged `coi` command (config, Incus sessions, the user's terminal)."""

__version__ = "0.1.0"
