"""miniclip: a readable from-scratch CLIP."""
