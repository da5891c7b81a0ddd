"""Use cases shared by the API, activities and the CLI: they raise domain errors, never HTTP ones."""
