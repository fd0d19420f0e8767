"""coi.launcher.session"""
