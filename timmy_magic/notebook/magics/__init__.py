"""The ``%llm`` lines with a parser and a run of their own, imported on first use:
``bench`` (``%llm bench``) and ``evaluate`` (``%llm eval``)."""
