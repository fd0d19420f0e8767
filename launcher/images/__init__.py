"""coi.launcher.images"""
