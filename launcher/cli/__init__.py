"""coi.launcher.cli"""
