"""Student package of the chapter-3 lab (reference implementation)."""
