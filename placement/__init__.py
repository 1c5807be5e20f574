"""Pure placement engine (filled in by the placement issue)."""
