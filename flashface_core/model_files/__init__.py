"""The model files: the official files (catalog), the ComfyUI folders they go in, and the messages when one is missing."""
