"""Fails at import, like a plugin whose dependency is missing."""

import docingest_missing_dependency  # noqa: F401


class Parser:
    name = "broken"

