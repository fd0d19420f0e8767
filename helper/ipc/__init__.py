"""The varlink wire protocol, shared by the helper (server) and the launcher (client).

Nothing in this package imports server-only code: the launcher's `HelperClient` builds on it.
"""
