"""Command-line entry point (filled in below)."""
def main() -> int:
    return 0
