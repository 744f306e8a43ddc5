"""The text side of the data path around the engine: loading, templates, streaming text, sync and async fronts."""
