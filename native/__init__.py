"""coi.native: netlink batch parsing (compiled with cffi), with a pure-Python fallback."""
