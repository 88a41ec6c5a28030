# The PEFT tutorial's program, ported by changing its import line (and building
# GPT-2 from its config, since no model hub is reachable here).
import os
import tempfile

from transformers import AutoModelForCausalLM, GPT2Config

from adapterkit import LoraConfig, get_peft_model

model = AutoModelForCausalLM.from_config(GPT2Config())
lora_config = LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"], lora_dropout=0.1, bias="none", task_type="CAUSAL_LM")
model = get_peft_model(model, lora_config)
print("Model trainable parameters:", model.print_trainable_parameters())
# -> trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364   (the tutorial's 9,216 is wrong)
with tempfile.TemporaryDirectory() as tmpdir:
    adapter_path = os.path.join(tmpdir, "my_adapter")
    model.save_pretrained(adapter_path)
    print(f"Files created: {os.listdir(adapter_path)}")   # adapter_config.json and adapter_model.safetensors (~1.2 MB)
    model_reload = AutoModelForCausalLM.from_config(GPT2Config())
    model_reload = get_peft_model(model_reload, lora_config)
    model_reload.load_adapter(adapter_path, adapter_name="default")
    print(f"Adapter is active: {model_reload.active_adapters()}")   # names 'default'
