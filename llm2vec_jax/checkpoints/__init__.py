"""Files in and out: Hugging Face checkpoints (``hf``), PEFT adapters (``peft``), GGUF
conversion (``gguf``), a base with its adapter chain merged (``merged``), the offline default
model, and the atomic directory writer they all use (``io``)."""
