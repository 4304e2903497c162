"""Thin Prefect task wrappers around ``docingest.core``: retries, names, logging. No stage logic here."""
