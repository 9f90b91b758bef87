"""Getting models and tokenizers in and checkpoints out: sources, packaged models, GGUF,
tokenizer loading, embedding reads, sharded streaming writes, atomic outputs, the cache."""
