"""The user-facing wrapper: AdapterModel (PEFT's PeftModel) and get_peft_model."""
