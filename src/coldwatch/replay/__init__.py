"""Validation replay: scenarios through the rules engine, evidence reports for QA."""
