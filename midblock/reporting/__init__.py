"""Reporting: plots and the self-contained HTML report a person reads."""
