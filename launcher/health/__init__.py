"""coi.launcher.health"""
