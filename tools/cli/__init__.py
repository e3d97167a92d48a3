"""What the user types and gets back: the flags and their checks, one-line errors, output folders
that never lose what a user had."""
