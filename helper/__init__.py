"""coi-helper: the minimal privileged helper (varlink IPC, nftables policy, kernel events)."""

__version__ = "0.1.0"
