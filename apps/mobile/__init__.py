"""Mobile-app layouts (placeholder while being written)."""
TARGETS: dict = {}
