"""coi.launcher.incus"""
