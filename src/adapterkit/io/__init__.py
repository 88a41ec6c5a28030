"""The on-disk contract: PEFT's adapter folder format, keys, fingerprints."""
