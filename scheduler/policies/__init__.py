"""Built-in policy presets: one file each, listed in scheduler/registry.py."""
