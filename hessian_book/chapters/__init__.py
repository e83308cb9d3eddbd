"""One module per chapter of the book: ``Config`` (defaults, presets, validation) and ``run(config) -> Result``."""
