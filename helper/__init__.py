"""coi-helper: the minimal privileged helper (varlink IPC, nftables policy, kernel event sources)."""

__version__ = "0.1.0"
