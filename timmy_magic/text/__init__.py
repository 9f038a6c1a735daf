"""Text for people: escaping for Markdown and HTML, fences, one-line cuts and counts."""
