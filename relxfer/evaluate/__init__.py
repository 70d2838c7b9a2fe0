"""The evaluation stage: the item loop (loop.py), the Backend protocol (base.py), and the
evaluation engines behind it: local transformers, an OpenAI-compatible/vLLM server, Tinker."""
