"""Models: loading a spec's model entry (hub id, local directory or built-in), building the
built-in models into the cache, and the tokenizer helpers every engine shares."""
