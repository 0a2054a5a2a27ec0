"""Pax8 (the distributor): subscription seats under Microsoft NCE terms, in the `bill` phase."""
