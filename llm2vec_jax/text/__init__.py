"""Text before the model: the reference's string rules, tokenization, length buckets and
packing."""
