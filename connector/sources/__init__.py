"""One module per HR feed; each yields terminations."""
