"""Other tools' layouts at the edge: the Hugging Face hub cache (publish from it, pull into it)."""
