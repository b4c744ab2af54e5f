"""Utilities every room may use; they import nothing from the rest of imprint."""
