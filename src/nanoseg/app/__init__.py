"""``nanoseg app``: a page for microscopists (FastAPI) and its static files."""
