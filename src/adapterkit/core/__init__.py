"""LoRA math and injection. Imports torch and the standard library only."""
