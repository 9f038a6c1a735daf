"""What the notebook shows: an answer streaming and finished (``render``, ``answer``),
side by side (``compare_view``), progress (``progress``), a failure (``failures``),
status tables (``tables``) and the provider panel (``widget``, ``panel_html``)."""
