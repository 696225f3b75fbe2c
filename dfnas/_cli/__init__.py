"""Argument parsers of the dfnas command (parse, then call one library function)."""
