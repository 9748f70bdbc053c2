"""Packaged data: the builtin prompt set (``prompts.jsonl``), read via importlib.resources."""
