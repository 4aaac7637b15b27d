"""File formats: safetensors without torch, Hugging Face model folders (the restructuring adds the rest)."""
